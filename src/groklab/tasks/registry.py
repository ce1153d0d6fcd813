"""The task registry: name -> (parameter schema, builder). A task, built-in or a plugin's
(`groklab.config.plugins`), registers itself here with `register_task`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from groklab.config import TaskConfig, format_validation_error
from groklab.config.plugins import claim
from groklab.errors import ConfigError
from groklab.tasks.base import Task


@dataclass(frozen=True)
class TaskSpec:
    params: type[BaseModel]
    build: Callable[[BaseModel, int], Task]


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, params: type[BaseModel]):
    """Register the task `name`: `@register_task("name", Params)` on `build(params, seed) -> Task`.

    `Params` (a pydantic BaseModel; `extra="forbid"` makes a misspelt key an error) validates the
    config's `task:` keys besides `name`; `build` gets the validated params and the data seed and
    returns a `Task` (groklab.tasks.base). A name another module registered is refused (ConfigError)."""
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise ConfigError(f"task '{name}': params must be a pydantic BaseModel subclass, got {params!r}")

    def decorate(build):
        if not callable(build):
            raise ConfigError(f"task '{name}': register_task decorates build(params, seed) -> Task, got {build!r}")
        old = TASKS.get(name)
        claim("task", name, build, old.build if old else None)
        TASKS[name] = TaskSpec(params, build)
        return build

    return decorate


register = register_task  # the older name, for code written against it


def task_params(config: TaskConfig) -> BaseModel:
    """The task's validated parameters (defaults filled in)."""
    spec = TASKS.get(config.name)
    if spec is None:
        close = difflib.get_close_matches(config.name, TASKS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"config: unknown task '{config.name}'; {hint}known: {', '.join(sorted(TASKS))}; "
            "a task of your own comes from a plugin (docs/extending.md)"
        )
    try:
        return spec.params.model_validate(config.params())
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="task", schema=spec.params)) from None


def build_task(config: TaskConfig, seed: int) -> Task:
    """Build the task named by `config` with its data seed."""
    params = task_params(config)
    return TASKS[config.name].build(params, seed)

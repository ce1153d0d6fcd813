"""The task registry: name -> (parameter schema, builder). A new task registers itself here."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from groklab.config import TaskConfig, format_validation_error
from groklab.errors import ConfigError
from groklab.tasks.base import Task


@dataclass(frozen=True)
class TaskSpec:
    params: type[BaseModel]
    build: Callable[[BaseModel, int], Task]


TASKS: dict[str, TaskSpec] = {}


def register(name: str, params: type[BaseModel]):
    def decorate(build):
        TASKS[name] = TaskSpec(params, build)
        return build

    return decorate


def task_params(config: TaskConfig) -> BaseModel:
    """The task's validated parameters (defaults filled in)."""
    spec = TASKS.get(config.name)
    if spec is None:
        close = difflib.get_close_matches(config.name, TASKS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"config: unknown task '{config.name}'; {hint}known: {', '.join(sorted(TASKS))}")
    try:
        return spec.params.model_validate(config.params())
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="task", schema=spec.params)) from None


def build_task(config: TaskConfig, seed: int) -> Task:
    """Build the task named by `config` with its data seed."""
    params = task_params(config)
    return TASKS[config.name].build(params, seed)

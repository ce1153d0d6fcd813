"""Models layer: nn.Modules only. One transformer serves every sequence task, configured, not copied;
an MLP and a ResNet-18 serve vector and image tasks. `model.arch` picks a model registered here with
`register_model`, a built-in or a plugin's (`groklab.config.plugins`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn
from pydantic import BaseModel, ValidationError

from groklab.config import ModelConfig, format_validation_error
from groklab.config.plugins import claim
from groklab.errors import ConfigError
from groklab.models.mlp import MLP, MLPConfig
from groklab.models.resnet import ResNet18, ResNetConfig
from groklab.models.transformer import HookPoint, Transformer, TransformerConfig
from groklab.tasks import Task


@dataclass(frozen=True)
class ModelSpec:
    config: type[BaseModel]
    build: Callable[[BaseModel, int], nn.Module]
    from_task: Callable[[Task, dict], dict]  # the sizes the task sets, given the user's parameters
    sizes: tuple[str, ...]  # the config fields from_task sets (a user may not)
    sequence: bool  # consumes token sequences (else vectors / images)


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    config: type[BaseModel],
    *,
    from_task: Callable[[Task, dict], dict],
    sizes: tuple[str, ...],
    sequence: bool,
):
    """Register the model `name` (`model.arch: name`): `@register_model("name", Config, from_task=...,
    sizes=(...), sequence=...)` on `build(cfg, seed) -> nn.Module` (an nn.Module class taking (cfg, seed)).

    `Config`, a pydantic BaseModel of this model only, validates the config's `model:` keys; `sizes` are
    its fields the task sets (vocabulary, context, outputs, ...), which `from_task(task, params)` returns
    (`params`: the user's keys, which it may read and pop); `sequence`: the model reads token sequences
    (`model(tokens, at=pos)`, a task with a vocabulary) or else vectors / images (`model(x)`). A name
    another module registered is refused (ConfigError)."""
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise ConfigError(f"model '{name}': config must be a pydantic BaseModel subclass, got {config!r}")
    if not callable(from_task):
        raise ConfigError(f"model '{name}': from_task must be a function (task, params) -> sizes, got {from_task!r}")
    sizes = (sizes,) if isinstance(sizes, str) else tuple(sizes)
    missing = [size for size in sizes if size not in config.model_fields]
    if missing:
        raise ConfigError(f"model '{name}': size '{missing[0]}' is not a field of {config.__name__}")
    taken = next((arch for arch, spec in MODELS.items() if spec.config is config and arch != name), None)
    if taken:
        raise ConfigError(f"model '{name}': {config.__name__} is the config of model '{taken}'; give each its own")

    def decorate(build):
        if not callable(build):
            raise ConfigError(f"model '{name}': register_model decorates build(cfg, seed) -> nn.Module, got {build!r}")
        old = MODELS.get(name)
        claim("model", name, build, old.build if old else None)
        MODELS[name] = ModelSpec(config, build, from_task, sizes, bool(sequence))
        return build

    return decorate


def _transformer_sizes(task: Task, params: dict) -> dict:
    outputs = params.pop("outputs", "vocab")
    if outputs not in ("vocab", "answers"):
        raise ConfigError(f"config: model.outputs must be 'vocab' or 'answers', got {outputs!r}")
    return {
        "d_vocab": task.d_vocab,
        "n_ctx": task.n_ctx,
        "d_vocab_out": task.n_classes if outputs == "answers" else None,
    }


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# the built-in models, registered as a plugin's are
register_model(
    "transformer",
    TransformerConfig,
    from_task=_transformer_sizes,
    sizes=("d_vocab", "n_ctx", "d_vocab_out"),
    sequence=True,
)(Transformer)
register_model(
    "mlp",
    MLPConfig,
    from_task=lambda task, params: {"d_in": _size(task.input_shape), "d_out": task.n_outputs},
    sizes=("d_in", "d_out"),
    sequence=False,
)(MLP)
register_model(
    "resnet18",
    ResNetConfig,
    from_task=lambda task, params: {"in_channels": task.input_shape[0], "num_classes": task.n_outputs},
    sizes=("in_channels", "num_classes"),
    sequence=False,
)(ResNet18)


def model_config(config: ModelConfig, task: Task) -> BaseModel:
    """The validated model config for a task (its sizes set from the task)."""
    spec = MODELS.get(config.arch)
    if spec is None:
        raise ConfigError(
            f"config: unknown model.arch '{config.arch}'; known: {', '.join(MODELS)}; "
            "a model of your own comes from a plugin (docs/extending.md)"
        )
    if spec.sequence != bool(task.vocab):
        kind = "token sequences" if spec.sequence else "vectors or images"
        raise ConfigError(
            f"config: model.arch '{config.arch}' takes {kind}, but task '{task.name}' does not provide them"
        )
    params = config.params()
    taken = [key for key in spec.sizes if key in params]
    if taken:
        raise ConfigError(f"config: model.{taken[0]} is set from the task; remove it")
    sizes = spec.from_task(task, params)
    try:
        return spec.config(**sizes, **params)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="model", schema=spec.config)) from None


def resolved_params(cfg: BaseModel) -> dict:
    """The model's parameters as a config section (defaults filled in, task-derived sizes left out)."""
    arch = _arch(cfg)
    data = cfg.model_dump(mode="json", exclude=set(MODELS[arch].sizes))
    if arch == "transformer":
        data["biases"] = sorted(data["biases"])
        data["outputs"] = "vocab" if cfg.d_vocab_out is None else "answers"
    return {"arch": arch, **data}


def build_model(cfg: BaseModel, seed: int) -> nn.Module:
    return MODELS[_arch(cfg)].build(cfg, seed)


def _arch(cfg: BaseModel) -> str:
    """The model a validated config is of (each model has its own config class)."""
    return next(name for name, spec in MODELS.items() if type(cfg) is spec.config)


__all__ = [
    "MLP",
    "MLPConfig",
    "MODELS",
    "HookPoint",
    "ResNet18",
    "ResNetConfig",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "model_config",
    "register_model",
    "resolved_params",
]

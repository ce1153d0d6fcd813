"""Models layer: nn.Modules only. One transformer serves every sequence task, configured, not copied;
an MLP and a ResNet-18 serve vector and image tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn
from pydantic import BaseModel, ValidationError

from groklab.config import ModelConfig, format_validation_error
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
    sequence: bool  # consumes token sequences (else vectors / images)


def _transformer_sizes(task: Task, params: dict) -> dict:
    outputs = params.pop("outputs", "vocab")
    if outputs not in ("vocab", "answers"):
        raise ConfigError(f"config: model.outputs must be 'vocab' or 'answers', got {outputs!r}")
    return {
        "d_vocab": task.d_vocab,
        "n_ctx": task.n_ctx,
        "d_vocab_out": task.n_classes if outputs == "answers" else None,
    }


MODELS: dict[str, ModelSpec] = {
    "transformer": ModelSpec(TransformerConfig, Transformer, _transformer_sizes, sequence=True),
    "mlp": ModelSpec(
        MLPConfig, MLP, lambda task, params: {"d_in": _size(task.input_shape), "d_out": task.n_outputs}, sequence=False
    ),
    "resnet18": ModelSpec(
        ResNetConfig,
        ResNet18,
        lambda task, params: {"in_channels": task.input_shape[0], "num_classes": task.n_outputs},
        sequence=False,
    ),
}
FROM_TASK = {
    "transformer": ("d_vocab", "n_ctx", "d_vocab_out"),
    "mlp": ("d_in", "d_out"),
    "resnet18": ("in_channels", "num_classes"),
}


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_config(config: ModelConfig, task: Task) -> BaseModel:
    """The validated model config for a task (its sizes set from the task)."""
    spec = MODELS.get(config.arch)
    if spec is None:
        raise ConfigError(f"config: unknown model.arch '{config.arch}'; known: {', '.join(MODELS)}")
    if spec.sequence != bool(task.vocab):
        kind = "token sequences" if spec.sequence else "vectors or images"
        raise ConfigError(
            f"config: model.arch '{config.arch}' takes {kind}, but task '{task.name}' does not provide them"
        )
    params = config.params()
    taken = [key for key in FROM_TASK[config.arch] if key in params]
    if taken:
        raise ConfigError(f"config: model.{taken[0]} is set from the task; remove it")
    sizes = spec.from_task(task, params)
    try:
        return spec.config(**sizes, **params)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="model", schema=spec.config)) from None


def resolved_params(cfg: BaseModel) -> dict:
    """The model's parameters as a config section (defaults filled in, task-derived sizes left out)."""
    arch = next(name for name, spec in MODELS.items() if isinstance(cfg, spec.config))
    data = cfg.model_dump(mode="json", exclude=set(FROM_TASK[arch]))
    if arch == "transformer":
        data["biases"] = sorted(data["biases"])
        data["outputs"] = "vocab" if cfg.d_vocab_out is None else "answers"
    return {"arch": arch, **data}


def build_model(cfg: BaseModel, seed: int) -> nn.Module:
    arch = next(name for name, spec in MODELS.items() if isinstance(cfg, spec.config))
    return MODELS[arch].build(cfg, seed)


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
    "resolved_params",
]

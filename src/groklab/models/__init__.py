"""Models layer: nn.Modules only. One transformer serves every sequence task, configured, not copied."""
from __future__ import annotations

from pydantic import ValidationError

from groklab.config import ModelConfig, format_validation_error
from groklab.errors import ConfigError
from groklab.models.transformer import HookPoint, Transformer, TransformerConfig

MODELS = {"transformer": (TransformerConfig, Transformer)}
FROM_TASK = ("d_vocab", "n_ctx", "d_vocab_out")


def model_config(config: ModelConfig, d_vocab: int, n_ctx: int, n_classes: int) -> TransformerConfig:
    """The validated model config for a task's vocabulary and sequence length.

    `outputs: vocab` (default) gives one output per input token (Nanda's 114 for p=113);
    `outputs: answers` one per answer class (TransformerLens' grokking demo: 113).
    """
    if config.arch not in MODELS:
        raise ConfigError(f"config: unknown model.arch '{config.arch}'; known: {', '.join(MODELS)}")
    schema = MODELS[config.arch][0]
    params = config.params()
    taken = [key for key in FROM_TASK if key in params]
    if taken:
        raise ConfigError(f"config: model.{taken[0]} is set from the task; remove it (use model.outputs: vocab|answers)")
    outputs = params.pop("outputs", "vocab")
    if outputs not in ("vocab", "answers"):
        raise ConfigError(f"config: model.outputs must be 'vocab' or 'answers', got {outputs!r}")
    try:
        return schema(d_vocab=d_vocab, n_ctx=n_ctx, d_vocab_out=n_classes if outputs == "answers" else None, **params)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="model", schema=schema)) from None


def resolved_params(cfg: TransformerConfig) -> dict:
    """The model's parameters as a config section (defaults filled in, task-derived sizes left out)."""
    data = cfg.model_dump(mode="json", exclude=set(FROM_TASK))
    data["biases"] = sorted(data["biases"])
    return {"arch": "transformer", **data, "outputs": "vocab" if cfg.d_vocab_out is None else "answers"}


def build_model(cfg: TransformerConfig, seed: int) -> Transformer:
    return MODELS["transformer"][1](cfg, seed)


__all__ = ["MODELS", "HookPoint", "Transformer", "TransformerConfig", "build_model", "model_config", "resolved_params"]

"""TransformerLens `HookedTransformer` checkpoints, read into groklab (whose transformer uses TransformerLens'
weight names and shapes, so the weights carry over as they are).

Files it reads:
- a `torch.save`d dict with the state dict under 'model' (or 'state_dict') and the config under 'config'
  (or 'cfg'): a `HookedTransformerConfig` (read as data: TransformerLens need not be installed, and nothing
  in the file is run) or its `to_dict()`; and, as the TransformerLens grokking demo saves them,
  'checkpoints' with 'checkpoint_epochs', 'train_losses', 'test_losses', 'train_indices', 'test_indices';
- a bare state dict (`torch.save(model.state_dict(), PATH)`, or a .safetensors file) with its config as JSON
  (`cfg.to_dict()`, values JSON cannot hold as strings): given with --config, else PATH with the suffix
  .json, else config.json beside it.

What groklab's transformer can be: learned absolute positions, LayerNorm before each sublayer or none (a
folded "LNPre" becomes LayerNorm with unit weights), ReLU or exact GELU, attention scaled by 1/sqrt(d_head),
causal. Biases that are zero in every checkpoint (the demo freezes them at zero) are left out of the config;
TransformerLens' `mask` / `IGNORE` buffers are dropped. Anything else (rotary, parallel attention, RMSNorm,
gated MLPs, ...) is refused with the field that asks for it. Steps are the epoch numbers the file gives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from groklab.errors import ConfigError
from groklab.store.importers.foreign import (
    ForeignFileError,
    ForeignRun,
    as_dict,
    check_shape,
    load_torch,
    losses,
    need,
    tensor_dict,
    train_fraction,
)

LAYOUT = "a TransformerLens HookedTransformer state dict"
MODULAR = ("add", "sub", "mul", "div", "x2xyy2", "x2y2", "x3xy", "rand")  # groklab's [a, b, =] tasks
DEMO_SEEDS = (598,)  # the TransformerLens grokking demo's DATA_SEED (not in its file)
BUFFERS = (".attn.mask", ".attn.IGNORE", ".attn.rotary_sin", ".attn.rotary_cos")
# config fields groklab cannot honour unless they have these values (absent fields: TransformerLens' default)
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "attn_only": ((False,), "attention-only blocks (groklab's blocks have an MLP)"),
    "gated_mlp": ((False,), "a gated MLP"),
    "parallel_attn_mlp": ((False,), "attention and MLP in parallel"),
    "use_local_attn": ((False,), "local attention"),
    "attention_dir": (("causal",), "bidirectional attention"),
    "post_embedding_ln": ((False,), "a LayerNorm after the embedding"),
    "use_normalization_before_and_after": ((False,), "LayerNorm before and after each sublayer"),
    "final_rms": ((False,), "a final RMSNorm"),
    "use_qk_norm": ((False,), "query/key normalization"),
    "scale_attn_by_inverse_layer_idx": ((False,), "attention scaled by 1/layer"),
    "use_logn_attn": ((False,), "log-n attention scaling"),
    "use_attention_sinks": ((False,), "attention sinks"),
    "num_experts": ((None,), "mixture-of-experts MLPs"),
    "clip_qkv": ((None,), "clipped q/k/v"),
    "uses_rms_norm": ((False,), "RMSNorm"),
}


def read_transformer_lens(
    path: str | Path, task: str | None = None, config_path: str | Path | None = None
) -> ForeignRun:
    """Read a TransformerLens checkpoint; `task` names the groklab task the model was trained on (needed unless
    the file is the TransformerLens grokking demo's), `config_path` a JSON config for a bare state dict."""
    path = Path(path)
    obj = load_torch(path)
    notes: list[str] = []
    state, cfg, extra = _unpack(obj, path)
    sample = state if state is not None else tensor_dict((extra.get("checkpoints") or [None])[0]) or {}
    if sample.get("blocks.0.attn.W_O", torch.empty(0, 0, 0)).ndim == 2:
        raise ForeignFileError(f"{path} is in Nanda et al.'s layout (2-d W_O); use `groklab import nanda`")
    if config_path is not None:
        cfg = _read_json(Path(config_path))
        notes.append(f"config: {config_path}")
    if cfg is None:
        for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
            if candidate.is_file():
                cfg = _read_json(candidate)
                notes.append(f"config: {candidate}")
                break
    if cfg is None:
        raise ForeignFileError(
            f"{path} holds no TransformerLens config; save {{'model': model.state_dict(), 'config': model.cfg}}, "
            "or give --config CFG.json (model.cfg.to_dict() as JSON)"
        )
    checkpoints = _checkpoints(state, extra, path)
    curves = {
        name.replace("_losses", "_loss"): dict(enumerate(losses(extra[name], name, path)))
        for name in ("train_losses", "test_losses")
        if extra.get(name) is not None
    }
    final = max(len(c) for c in curves.values()) - 1 if curves else None
    if state is not None:
        last = max(checkpoints) if checkpoints else None
        if last is None or not _equal(checkpoints[last], state):
            step = (
                final if final is not None and (last is None or final > last) else (last + 1 if last is not None else 0)
            )
            checkpoints[step] = dict(state)
    model, sizes = _model(cfg, checkpoints, path, notes)
    split = None
    if extra.get("train_indices") is not None and extra.get("test_indices") is not None:
        split = (
            torch.as_tensor(extra["train_indices"]).long().flatten(),
            torch.as_tensor(extra["test_indices"]).long().flatten(),
        )
    demo = split is not None and sizes["n_ctx"] == 3 and sizes["d_vocab_out"] == sizes["d_vocab"] - 1
    task_cfg, train = _task(task, demo, sizes, split, path, notes)
    model["outputs"] = "vocab" if sizes["d_vocab_out"] == sizes["d_vocab"] else "answers"
    steps = sorted(checkpoints)
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    every = max(1, min(gaps)) if gaps else max(1, steps[-1])
    train.update(max_steps=max(1, steps[-1]), eval_every=every, checkpoint_every=every)
    config = {
        "name": f"tl-{path.stem}",
        "source": f"imported from {path} (TransformerLens HookedTransformer)",
        "task": task_cfg,
        "model": model,
        "train": train,
    }
    if isinstance(cfg.get("seed"), int):
        config["model_seed"] = cfg["seed"]
    weights = {step: _convert(w, sizes, cfg) for step, w in checkpoints.items()}
    return ForeignRun(
        "transformer-lens",
        path,
        config,
        weights,
        {k: v for k, v in curves.items() if v},
        notes,
        split,
        "as the file's training loop computed them (the TransformerLens demo: float64 cross-entropy over the "
        "outputs at the last position, before each epoch's update for train, after it for test)",
        seed_hints=DEMO_SEEDS if demo else (),
    )


def _unpack(obj: Any, path: Path) -> tuple[dict | None, dict | None, dict]:
    """(the state dict, the config, the other entries) of what the file holds."""
    bare = tensor_dict(obj)
    if bare is not None:
        return bare, None, {}
    if not isinstance(obj, Mapping):
        raise ForeignFileError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a dict with one: not {LAYOUT}"
        )
    state = None
    for key in ("model", "state_dict", "model_state_dict"):
        if obj.get(key) is not None:
            state = tensor_dict(obj[key])
            if state is None:
                raise ForeignFileError(f"{path}: '{key}' is not a state dict: not {LAYOUT}")
            break
    if state is None and obj.get("checkpoints") is None:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise ForeignFileError(f"{path} has no 'model', 'state_dict' or 'checkpoints' (keys: {keys}): not {LAYOUT}")
    cfg = obj.get("config", obj.get("cfg"))
    cfg = as_dict(cfg) if cfg is not None else None
    return state, cfg, dict(obj)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ForeignFileError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ForeignFileError(f"{path} is not valid JSON (line {err.lineno}); give the config as JSON") from None
    if not isinstance(data, dict):
        raise ForeignFileError(f"{path} is not a JSON object of HookedTransformerConfig fields")
    return data


def _checkpoints(state: dict | None, extra: dict, path: Path) -> dict[int, dict]:
    listed, epochs = extra.get("checkpoints"), extra.get("checkpoint_epochs")
    if listed is None:
        return {}
    if not isinstance(listed, (list, tuple)) or not all(tensor_dict(s) is not None for s in listed):
        raise ForeignFileError(f"{path}: 'checkpoints' is not a list of state dicts: not {LAYOUT}")
    if epochs is None or len(epochs) != len(listed):
        raise ForeignFileError(f"{path} lists {len(listed)} checkpoints but not as many 'checkpoint_epochs'")
    out = {}
    for epoch, sd in zip(epochs, listed):
        if int(epoch) in out:
            raise ForeignFileError(f"{path}: two checkpoints for epoch {int(epoch)}")
        out[int(epoch)] = tensor_dict(sd)
    return out


def _model(cfg: dict, checkpoints: dict[int, dict], path: Path, notes: list[str]) -> tuple[dict, dict]:
    """groklab's model section from a HookedTransformerConfig (ConfigError for what groklab cannot be), and
    the sizes, checked against the weights."""
    for name, (ok, what) in UNSUPPORTED.items():
        if name in cfg and cfg[name] not in ok:
            raise ConfigError(
                f"{path}: the model has {what} ({name}={cfg[name]!r}); groklab's transformer cannot represent it"
            )
    pos = cfg.get("positional_embedding_type", "standard")
    if pos != "standard":
        raise ConfigError(
            f"{path}: the model has {pos} positions (positional_embedding_type={pos!r}); groklab's transformer "
            "has learned absolute positions only"
        )
    norm = cfg.get("normalization_type", "LN")
    if norm not in (None, "LN", "LNPre"):
        raise ConfigError(f"{path}: normalization_type={norm!r} (RMSNorm); groklab's transformer has LayerNorm or none")
    if norm is not None and not math.isclose(float(cfg.get("eps", 1e-5)), 1e-5):
        raise ConfigError(f"{path}: LayerNorm eps={cfg.get('eps')}; groklab's LayerNorm has eps 1e-5")
    act = cfg.get("act_fn", "relu")
    if act not in ("relu", "gelu"):
        raise ConfigError(f"{path}: act_fn={act!r}; groklab's transformer has relu or gelu (exact)")
    kv = cfg.get("n_key_value_heads")
    if kv is not None and kv != cfg.get("n_heads"):
        raise ConfigError(
            f"{path}: grouped-query attention (n_key_value_heads={kv}); groklab's transformer cannot represent it"
        )
    for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if float(cfg.get(name, -1.0) or -1.0) > 0:
            raise ConfigError(f"{path}: {name}={cfg[name]}; groklab's transformer has no soft caps")
    missing = [k for k in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx") if cfg.get(k) is None]
    if missing:
        raise ForeignFileError(f"{path}: the config has no '{missing[0]}': not a HookedTransformerConfig")
    sizes = {k: int(cfg[k]) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx")}
    sizes["d_mlp"] = int(cfg.get("d_mlp") or 4 * sizes["d_model"])
    out = int(cfg.get("d_vocab_out", -1) or -1)
    sizes["d_vocab_out"] = sizes["d_vocab"] if out <= 0 else out
    scale = float(cfg.get("attn_scale", math.sqrt(sizes["d_head"]))) if cfg.get("use_attn_scale", True) else 1.0
    if not math.isclose(scale, math.sqrt(sizes["d_head"]), rel_tol=1e-12):
        raise ConfigError(
            f"{path}: attention scores divided by {scale:g}, not sqrt(d_head) = {math.sqrt(sizes['d_head']):g}; "
            "groklab's transformer cannot represent it"
        )
    if not checkpoints:
        raise ForeignFileError(f"{path} holds no model weights: not {LAYOUT}")
    first = next(iter(checkpoints.values()))
    _check_weights(first, sizes, norm, path)
    biases = []
    for group, names in (
        ("attn", (".attn.b_Q", ".attn.b_K", ".attn.b_V", ".attn.b_O")),
        ("mlp", (".mlp.b_in", ".mlp.b_out")),
        ("unembed", ("unembed.b_U",)),
    ):
        if any(k.endswith(names) and w[k].count_nonzero() for w in checkpoints.values() for k in w):
            biases.append(group)
    notes.append(
        "model: from the file's HookedTransformerConfig; biases: "
        + (", ".join(biases) if biases else "none")
        + " (bias groups zero in every checkpoint are left out: exact)"
    )
    if norm == "LNPre":
        notes.append(
            "normalization: LNPre (folded) -> LayerNorm before each sublayer with unit weights and zero biases"
        )
    dtype = str(cfg.get("dtype", "torch.float32"))
    if dtype not in ("torch.float32", "float32"):
        notes.append(f"weights: {dtype} in the file, float32 in groklab")
    model = {
        "arch": "transformer",
        "n_layers": sizes["n_layers"],
        "d_model": sizes["d_model"],
        "n_heads": sizes["n_heads"],
        "d_head": sizes["d_head"],
        "d_mlp": sizes["d_mlp"],
        "act": act,
        "normalization": "none" if norm is None else "pre",
        "positional": "learned",
        "biases": biases,
        "init": "gpt2",
    }
    sizes["norm"] = norm
    return model, sizes


def _check_weights(w: Mapping[str, torch.Tensor], sizes: dict, norm: str | None, path: Path) -> None:
    V, D, C, H, E, M = (sizes[k] for k in ("d_vocab", "d_model", "n_ctx", "n_heads", "d_head", "d_mlp"))
    want = {
        "embed.W_E": ((V, D), "d_vocab, d_model"),
        "pos_embed.W_pos": ((C, D), "n_ctx, d_model"),
        "unembed.W_U": ((D, sizes["d_vocab_out"]), "d_model, d_vocab_out"),
    }
    for i in range(sizes["n_layers"]):
        b = f"blocks.{i}."
        want.update(
            {
                **{f"{b}attn.{n}": ((H, D, E), "n_heads, d_model, d_head") for n in ("W_Q", "W_K", "W_V")},
                f"{b}attn.W_O": ((H, E, D), "n_heads, d_head, d_model"),
                f"{b}mlp.W_in": ((D, M), "d_model, d_mlp"),
                f"{b}mlp.W_out": ((M, D), "d_mlp, d_model"),
            }
        )
    for name, (shape, meaning) in want.items():
        check_shape(name, need(w, name, len(shape), path, LAYOUT), shape, meaning + " from the config", path)
    if norm == "LN" and "blocks.0.ln1.w" not in w:
        raise ForeignFileError(f"{path} has no weight 'blocks.0.ln1.w' though its config says normalization_type 'LN'")


def _convert(w: Mapping[str, torch.Tensor], sizes: dict, cfg: dict) -> dict[str, torch.Tensor]:
    """The same names minus TransformerLens' buffers; LNPre's missing LayerNorm weights as ones and zeros."""
    out = {
        k: (v.float() if v.dtype != torch.float32 else v)
        for k, v in w.items()
        if not k.endswith(BUFFERS) and "hook_" not in k
    }
    if sizes["norm"] == "LNPre":
        D = sizes["d_model"]
        names = [f"blocks.{i}.{ln}" for i in range(sizes["n_layers"]) for ln in ("ln1", "ln2")] + ["ln_final"]
        for name in names:
            out.setdefault(f"{name}.w", torch.ones(D))
            out.setdefault(f"{name}.b", torch.zeros(D))
    return out


def _task(task: str | None, demo: bool, sizes: dict, split, path: Path, notes: list[str]) -> tuple[dict, dict]:
    """The task section (and the training settings known for it): `task` or the demo's modular addition."""
    train: dict = {}
    if task is None:
        if not demo:
            raise ConfigError(
                f"{path}: cannot tell which task this TransformerLens model was trained on; give --task NAME "
                "(e.g. --task add for [a, b, =] addition mod p)"
            )
        task = "add"
        notes.append(
            "task.name = add: the TransformerLens grokking demo's (its file has the split and d_vocab_out = p)"
        )
        train = {"lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "warmup_steps": 0, "batch_size": "full"}
        notes.append("train: the demo's settings (AdamW lr 1e-3, wd 1, betas (0.9, 0.98), no warmup, full batch)")
    params: dict = {"name": task}
    if task in MODULAR:
        params["p"] = sizes["d_vocab"] - 1
        notes.append(f"task.p = {params['p']}: d_vocab {sizes['d_vocab']} = p + 1 (tokens 0..p-1, then '=')")
        if split is not None:
            n_train, n = len(split[0]), len(split[0]) + len(split[1])
            params["frac_train"] = train_fraction(n_train, n)
            notes.append(f"task.frac_train = {params['frac_train']:g}: the file's split ({n_train} of {n})")
    return params, train


def _equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)

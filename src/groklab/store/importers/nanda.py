"""Checkpoints of Nanda et al. 2023's released code (`progress-measures-paper`, `transformers.py`), read into
groklab's names and shapes (spec progress-measures.md §1).

The files it reads, told apart by their keys (all written by `torch.save`):
- the analysis notebook's full run (`full_run_data.pth`): 'model', 'config' (a dict), 'state_dicts' with
  'epochs' (a checkpoint every 100 epochs), 'train_losses', 'test_losses';
- `transformers.py`'s Trainer: 'final.pth' ('model', 'train_losses', 'test_losses', 'epoch', 'optimizer',
  'scheduler'), '{epoch}.pth' ('model', 'train_loss', 'test_loss', 'epoch'), 'init.pth' ('model',
  'train_data', 'test_data'), or the directory it writes them to (read whole: every checkpoint, the split
  from init.pth, the curves from final.pth);
- a checkpoint list under 'checkpoints' with 'checkpoint_epochs' (the names the TransformerLens demo uses);
- a bare state dict.

Their weight layout, and groklab's (= TransformerLens'):
    embed.W_E        (d_model, d_vocab)          -> (d_vocab, d_model)
    pos_embed.W_pos  (n_ctx, d_model)            -> the same
    attn.W_Q/W_K/W_V (heads, d_head, d_model)    -> (heads, d_model, d_head)
    attn.W_O         (d_model, heads * d_head)   -> (heads, d_head, d_model)   (their z is (head, d_head)-major)
    mlp.W_in, b_in   (d_mlp, d_model), (d_mlp)   -> (d_model, d_mlp), the same
    mlp.W_out, b_out (d_model, d_mlp), (d_model) -> (d_mlp, d_model), the same
    unembed.W_U      (d_model, d_vocab)          -> the same
The causal-mask buffer `attn.mask` and any `hook_*` entries are dropped. Steps are the epoch numbers the file
gives (the paper's); their checkpoint at epoch e was saved after that epoch's update (epoch 0's has lr 0).
"""

from __future__ import annotations

import re
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

LAYOUT = "a checkpoint of Nanda et al.'s code (progress-measures-paper transformers.py)"
FN_NAMES = {"add": "add", "subtract": "sub", "x2xyy2": "x2xyy2", "rand": "rand"}  # their fn_name -> groklab task
_EPOCH_FILE = re.compile(r"^(\d+)\.pth$")


def read_nanda(path: str | Path, task: str | None = None) -> ForeignRun:
    """Read a file (or a Trainer's run directory) of Nanda et al.'s code; `task` names the groklab task when
    it is not their default modular addition (their config's fn_name says so when the file has one)."""
    path = Path(path)
    if not path.exists():
        raise ForeignFileError(f"no such file or directory: {path}")
    found = _Found(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name in ("init.pth", "final.pth") or _EPOCH_FILE.match(p.name))
        if not files:
            raise ForeignFileError(f"{path} holds no init.pth, final.pth or EPOCH.pth of Nanda et al.'s Trainer")
        for file in files:
            found.add(file, load_torch(file))
    else:
        found.add(path, load_torch(path))
    return found.run(task)


class _Found:
    """What the file(s) hold, gathered before any conversion."""

    def __init__(self, path: Path):
        self.path = path
        self.states: dict[int, tuple[Path, Mapping[str, torch.Tensor]]] = {}
        self.init: tuple[Path, Mapping[str, torch.Tensor]] | None = None
        self.config: dict = {}
        self.curves: dict[str, dict[int, float]] = {"train_loss": {}, "test_loss": {}}
        self.split: tuple[list, list] | None = None
        self.notes: list[str] = []

    def add(self, file: Path, obj: Any) -> None:
        bare = tensor_dict(obj)
        if bare is not None:
            if file.name == "init.pth":
                self.init = (file, bare)
            else:
                self._state(file, _file_epoch(file), bare)
            return
        if not isinstance(obj, Mapping):
            raise ForeignFileError(
                f"{file} holds a {type(obj).__name__}, not a state dict or a dict of them: not {LAYOUT}"
            )
        config = obj.get("config")
        if config is not None:
            self.config.update(as_dict(config) or {})
        listed = obj.get("state_dicts", obj.get("checkpoints"))
        epochs = obj.get("epochs", obj.get("checkpoint_epochs"))
        for name in ("train_losses", "test_losses"):
            if obj.get(name) is not None:
                curve = _curve(losses(obj[name], name, file), self._stride(obj, name, file))
                self.curves[name.replace("_losses", "_loss")] = curve
        if listed is not None:
            if not isinstance(listed, (list, tuple)) or not all(tensor_dict(s) is not None for s in listed):
                raise ForeignFileError(f"{file}: 'state_dicts' is not a list of state dicts: not {LAYOUT}")
            if epochs is None:
                every = self.config.get("save_every")
                if not every:
                    raise ForeignFileError(f"{file} lists {len(listed)} state dicts but no 'epochs' saying when")
                epochs = [i * int(every) for i in range(len(listed))]
            epochs = [int(e) for e in epochs]
            if len(epochs) != len(listed):
                raise ForeignFileError(f"{file} lists {len(listed)} state dicts but {len(epochs)} epochs")
            for epoch, state in zip(epochs, listed):
                self._state(file, epoch, tensor_dict(state))
        if "train_data" in obj:
            self.split = (obj["train_data"], obj.get("test_data"))
        model = obj.get("model")
        if model is None:
            if listed is None:
                keys = ", ".join(map(str, list(obj)[:8]))
                raise ForeignFileError(
                    f"{file} has no 'model', 'state_dicts' or 'checkpoints' (keys: {keys}): not {LAYOUT}"
                )
            return
        state = tensor_dict(model)
        if state is None:
            raise ForeignFileError(f"{file}: 'model' is not a state dict: not {LAYOUT}")
        if file.name == "init.pth":
            self.init = (file, state)
            return
        epoch = obj.get("epoch")
        if epoch is None:
            epoch = _file_epoch(file) if _EPOCH_FILE.match(file.name) else None
        if epoch is None:
            train = self.curves["train_loss"]
            epoch = max(train) if train else max(self.states) if self.states else 0
        epoch = int(epoch)
        for name in ("train_loss", "test_loss"):
            if isinstance(obj.get(name), (int, float)) and epoch not in self.curves[name]:
                self.curves[name][epoch] = float(obj[name])
        if listed is not None and self.states:
            last = max(self.states)
            if _equal(self.states[last][1], state):
                return  # the final model is the list's last checkpoint
        if epoch in self.states and not _equal(self.states[epoch][1], state):
            self.notes.append(
                f"the file's 'model' differs from its checkpoint at epoch {epoch}; imported the checkpoint"
            )
            return
        self._state(file, epoch, state)

    def _stride(self, obj: Mapping, name: str, file: Path) -> int:
        """Epochs between the entries of a curve: 1, or (the saved runs' test losses, spec §3) every k-th."""
        if name == "train_losses" or obj.get("train_losses") is None:
            return 1
        n_train, n_test = len(obj["train_losses"]), len(obj["test_losses"])
        if n_test in (0, n_train):
            return 1
        k = max(1, round(n_train / n_test))
        if -(-n_train // k) != n_test:
            raise ForeignFileError(f"{file} has {n_train} train losses but {n_test} test losses: not every k-th epoch")
        self.notes.append(f"test losses: one every {k} epochs ({n_test} for {n_train} train losses)")
        return k

    def _state(self, file: Path, epoch: int, state: Mapping[str, torch.Tensor]) -> None:
        if epoch in self.states and not _equal(self.states[epoch][1], state):
            raise ForeignFileError(f"{file}: two different checkpoints for epoch {epoch}")
        self.states[epoch] = (file, state)

    def run(self, task: str | None) -> ForeignRun:
        if not self.states:
            if self.init is None:
                raise ForeignFileError(f"{self.path} holds no model weights: not {LAYOUT}")
            self.states[0] = self.init
        shapes = None
        checkpoints = {}
        for epoch in sorted(self.states):
            file, state = self.states[epoch]
            weights, found = convert(state, file)
            if shapes is not None and found != shapes:
                raise ForeignFileError(
                    f"{file}: the checkpoint at epoch {epoch} has other shapes than the first ({found} vs {shapes})"
                )
            shapes, checkpoints[epoch] = found, weights
        return ForeignRun(
            "nanda",
            self.path,
            self._config(shapes, sorted(checkpoints), task),
            self._trim(checkpoints, shapes),
            {k: v for k, v in self.curves.items() if v},
            self.notes,
            self._split(shapes),
            "as transformers.py computes them: the loss of all d_vocab outputs (with '='), float32 "
            "(helpers.cross_entropy_high_precision), before that epoch's update",
        )

    def _config(self, shapes: dict, steps: list[int], task: str | None) -> dict:
        cfg, notes = self.config, self.notes
        d_vocab, n_ctx = shapes["d_vocab"], shapes["n_ctx"]
        p = int(cfg.get("p", d_vocab - 1))
        notes.append(
            f"task.p = {p}: "
            + ("from the file's config" if "p" in cfg else f"d_vocab {d_vocab} = p + 1 (tokens 0..p-1, then '=')")
        )
        if d_vocab < p + 1:
            raise ConfigError(f"{self.path}: the config's p={p} needs {p + 1} tokens, but embed.W_E has {d_vocab}")
        if d_vocab > p + 1:  # Config(p=97) keeps the class-level d_vocab 114 (spec §7 #12): rows p+1.. are never used
            notes.append(
                f"embed.W_E / unembed.W_U: kept the first {p + 1} of {d_vocab} tokens (their Config's d_vocab bug)"
            )
        fn = cfg.get("fn_name", "add")
        if task is None:
            if fn not in FN_NAMES:
                raise ConfigError(
                    f"{self.path}: the config's fn_name '{fn}' is not one groklab knows; give --task NAME"
                )
            if n_ctx != 3:
                raise ConfigError(
                    f"{self.path}: n_ctx is {n_ctx}, not the [a, b, =] of modular arithmetic; give --task NAME"
                )
            task = FN_NAMES[fn]
            notes.append(
                f"task.name = {task}: "
                + (f"the config's fn_name '{fn}'" if "fn_name" in cfg else "the paper's (the file names no fn_name)")
            )
            if task == "rand":
                notes.append(
                    "warning: their 'rand' table is unseeded and redrawn on every access (spec §7 #14); groklab's "
                    "rand table is another, so train/test metrics here are not the original's"
                )
        data_seed = int(cfg.get("seed", 0))
        params: dict = {"name": task, "p": p, "split": "nanda"}
        if self.split is not None:
            train, test = self.split
            n_train, n_test = len(train), len(test or [])
            params["frac_train"] = (
                train_fraction(n_train, n_train + n_test) if n_test else float(cfg.get("frac_train", 0.3))
            )
        else:
            params["frac_train"] = float(cfg.get("frac_train", 0.3))
        notes.append(
            f"task.frac_train = {params['frac_train']:g}, data_seed = {data_seed}: "
            + ("the file's config" if "frac_train" in cfg or "seed" in cfg else "the paper's (0.3, 0)")
            + " with their split (Python's random.shuffle)"
        )
        act = str(cfg.get("act_type", "ReLU")).lower()
        if act not in ("relu", "gelu"):
            raise ConfigError(f"{self.path}: act_type '{cfg.get('act_type')}' is not one groklab's transformer has")
        model = {
            "arch": "transformer",
            "n_layers": shapes["n_layers"],
            "d_model": shapes["d_model"],
            "n_heads": shapes["n_heads"],
            "d_head": shapes["d_head"],
            "d_mlp": shapes["d_mlp"],
            "act": act,
            "normalization": "none",
            "positional": "learned",
            "biases": ["mlp"],
            "init": "nanda",
            "outputs": "vocab",
        }
        notes.append(
            "model: sizes from the weight shapes; act from "
            + ("the config's act_type" if "act_type" in cfg else "their default (ReLU)")
            + "; no LayerNorm, biases in the MLP only (their architecture)"
        )
        train = {"betas": [0.9, 0.98], "warmup_steps": 10, "batch_size": "full"}  # hard-coded in their Trainer
        for ours, theirs in (("lr", "lr"), ("weight_decay", "weight_decay")):
            if theirs in cfg:
                train[ours] = float(cfg[theirs])
        thresh = cfg.get("stopping_thresh")
        if isinstance(thresh, (int, float)) and thresh > 0:
            train["early_stop"] = {"metric": "test_loss", "threshold": float(thresh), "patience": 1}
        every = int(cfg.get("save_every") or _spacing(steps))
        train.update(max_steps=max(1, steps[-1]), eval_every=_spacing(steps), checkpoint_every=max(1, every))
        return {
            "name": f"nanda-{self.path.stem}",
            "source": f"imported from {self.path} (Nanda et al. 2023's released code, progress-measures-paper)",
            "seed": data_seed,
            "task": params,
            "model": model,
            "train": train,
        }

    def _trim(self, checkpoints: dict[int, dict], shapes: dict) -> dict[int, dict]:
        keep = int(self.config.get("p", shapes["d_vocab"] - 1)) + 1
        if keep >= shapes["d_vocab"]:
            return checkpoints
        return {
            step: {
                **w,
                "embed.W_E": w["embed.W_E"][:keep],
                "unembed.W_U": w["unembed.W_U"][:, :keep],
            }
            for step, w in checkpoints.items()
        }

    def _split(self, shapes: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """init.pth's train/test pairs (a, b, =) as indices a * p + b of the enumeration order."""
        if self.split is None:
            return None
        p = int(self.config.get("p", shapes["d_vocab"] - 1))
        try:
            index = lambda pairs: torch.tensor([int(a) * p + int(b) for a, b, *_ in pairs or []], dtype=torch.long)  # noqa: E731
            return index(self.split[0]), index(self.split[1])
        except (TypeError, ValueError):
            raise ForeignFileError(f"{self.path}: 'train_data' is not a list of (a, b, =) triples") from None


def convert(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Their state dict -> groklab's (names and shapes in the module doc), and the sizes it implies."""
    if any(k.endswith(".attn.b_Q") for k in state) or state.get("blocks.0.attn.W_O", torch.empty(0, 0)).ndim == 3:
        raise ForeignFileError(
            f"{path} is in TransformerLens' layout (3-d W_O, attention biases); use `groklab import transformer-lens`"
        )
    W_E = need(state, "embed.W_E", 2, path, LAYOUT)
    d_model, d_vocab = W_E.shape
    W_pos = need(state, "pos_embed.W_pos", 2, path, LAYOUT)
    n_ctx = W_pos.shape[0]
    check_shape("pos_embed.W_pos", W_pos, (n_ctx, d_model), "n_ctx, d_model", path)
    W_U = need(state, "unembed.W_U", 2, path, LAYOUT)
    check_shape("unembed.W_U", W_U, (d_model, W_U.shape[1]), "d_model, d_vocab", path)
    if W_U.shape[1] != d_vocab:
        raise ForeignFileError(
            f"{path}: unembed.W_U has {W_U.shape[1]} outputs but embed.W_E {d_vocab} tokens; their model has one vocabulary"
        )
    n_layers = len({k.split(".")[1] for k in state if re.match(r"blocks\.\d+\.", k)})
    if n_layers == 0:
        raise ForeignFileError(f"{path} has no weight 'blocks.0.attn.W_Q': not {LAYOUT}")
    W_Q0 = need(state, "blocks.0.attn.W_Q", 3, path, LAYOUT)
    n_heads, d_head = W_Q0.shape[:2]
    d_mlp = need(state, "blocks.0.mlp.W_in", 2, path, LAYOUT).shape[0]
    out = {"embed.W_E": W_E.T, "pos_embed.W_pos": W_pos, "unembed.W_U": W_U}
    used = set(out)
    for i in range(n_layers):
        b = f"blocks.{i}."
        for name in ("W_Q", "W_K", "W_V"):
            W = need(state, f"{b}attn.{name}", 3, path, LAYOUT)
            check_shape(f"{b}attn.{name}", W, (n_heads, d_head, d_model), "heads, d_head, d_model", path)
            out[f"{b}attn.{name}"] = W.transpose(1, 2)  # (heads, d_model, d_head)
        W_O = need(state, f"{b}attn.W_O", 2, path, LAYOUT)
        check_shape(f"{b}attn.W_O", W_O, (d_model, n_heads * d_head), "d_model, heads * d_head", path)
        out[f"{b}attn.W_O"] = W_O.T.reshape(n_heads, d_head, d_model)  # z_flat is 'b q (i h)': head-major
        shapes = {"W_in": (d_mlp, d_model), "b_in": (d_mlp,), "W_out": (d_model, d_mlp), "b_out": (d_model,)}
        for name, want in shapes.items():
            W = need(state, f"{b}mlp.{name}", len(want), path, LAYOUT)
            check_shape(f"{b}mlp.{name}", W, want, _meaning(name), path)
            out[f"{b}mlp.{name}"] = W.T if name.startswith("W_") else W
        mask = state.get(f"{b}attn.mask")
        if mask is not None and not torch.equal(mask.bool(), torch.tril(torch.ones(n_ctx, n_ctx)).bool()):
            raise ForeignFileError(f"{path}: {b}attn.mask is not the causal mask of {n_ctx} positions")
        used |= {f"{b}attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O", "mask")} | {f"{b}mlp.{n}" for n in shapes}
    extra = [k for k in state if k not in used and "hook_" not in k]
    if extra:
        raise ForeignFileError(
            f"{path} has weight '{extra[0]}', which the released model does not (a LayerNorm?): "
            "groklab imports their architecture (no LayerNorm, biases in the MLP only)"
        )
    weights = {}
    for name, tensor in out.items():
        weights[name] = tensor.float() if tensor.dtype != torch.float32 else tensor
    sizes = dict(
        d_vocab=d_vocab, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp
    )
    return weights, sizes


def _meaning(name: str) -> str:
    return {"W_in": "d_mlp, d_model", "b_in": "d_mlp", "W_out": "d_model, d_mlp", "b_out": "d_model"}[name]


def _file_epoch(file: Path) -> int:
    match = _EPOCH_FILE.match(file.name)
    return int(match.group(1)) if match else 0


def _curve(values: list[float], stride: int) -> dict[int, float]:
    return {i * stride: v for i, v in enumerate(values)}


def _spacing(steps: list[int]) -> int:
    """The smallest gap between checkpoint steps (1 for a single checkpoint at step 0)."""
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return max(1, min(gaps)) if gaps else max(1, steps[-1])


def _equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)

"""The run directory: the only code that knows its layout.

    RUN_DIR/
      config.yaml                         the resolved config (every default filled in)
      metrics.jsonl                       one JSON object per evaluation step, appended as training goes
      checkpoints/step_0000100.safetensors  model weights at that step (TransformerLens names)
      state.safetensors                   latest resume point: weights, optimizer, RNG, step (atomic)
      summary.json                        status and headline figures (atomic)
      report.html                         the run's interactive report (groklab.report; atomic)
      source.json                         an imported run's origin: format, file, its own loss curves (atomic)
      .lock                               held while a process trains the run
      tensorboard/, wandb/, mlflow/, trackers.json  what `--report-to` trackers mirror (store/trackers.py)

Crash safety: metrics are appended and flushed line by line (a torn last line from a kill is
ignored); every other file is written to a temporary name, synced and renamed into place, so a
run killed at any moment keeps its last complete checkpoint, state and summary.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from groklab.errors import RunDirError
from groklab.training import TrainState

CONFIG, METRICS, STATE, SUMMARY, REPORT, LOCK, CHECKPOINTS = (
    "config.yaml",
    "metrics.jsonl",
    "state.safetensors",
    "summary.json",
    "report.html",
    ".lock",
    "checkpoints",
)
SOURCE = "source.json"
_STEP_FILE = re.compile(r"step_(\d+)\.safetensors$")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creating and opening ---------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, config_yaml: str) -> RunDir:
        """A new run directory holding `config_yaml`. Never touches an existing run."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunDirError(
                f"{path} already exists; resume it with `groklab run --resume {path}` or choose another --out"
            )
        try:
            (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            _atomic_write(path / CONFIG, lambda tmp: tmp.write_text(config_yaml))
        except OSError as err:
            raise RunDirError(f"cannot create run directory {path}: {err.strerror}; choose another --out") from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory (it must at least hold its config)."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"no run directory at {path}")
        if not (path / CONFIG).is_file():
            raise RunDirError(f"{path} is not a groklab run (no {CONFIG})")
        return cls(path)

    def discard(self, keep_dir: bool = False) -> None:
        """Remove a run that never trained (no metrics yet; e.g. a tracker could not start), the directory
        itself unless `keep_dir` (it was there, empty, before the run)."""
        if self.metric_rows():
            raise RunDirError(f"{self.path} has trained; it is not discarded")
        for child in self.path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        if not keep_dir:
            self.path.rmdir()

    @property
    def config_yaml(self) -> str:
        return (self.path / CONFIG).read_text()

    # -- metrics ------------------------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def metric_rows(self) -> list[dict]:
        """All complete rows; a torn last line (the process was killed while writing it) is skipped."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        rows = []
        lines = path.read_text().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 2:  # only the last line may be torn
                    raise RunDirError(f"{path} is corrupt at line {i + 1}; the run cannot be read") from None
        return rows

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.metric_rows())

    def write_metrics(self, rows: list[dict]) -> None:
        """Replace the whole table, atomically."""
        _atomic_write(self.path / METRICS, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the rows up to `last_step` (the resume point), atomically."""
        self.write_metrics([row for row in self.metric_rows() if row["step"] <= last_step])

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        found = (_STEP_FILE.search(p.name) for p in (self.path / CHECKPOINTS).glob("step_*.safetensors"))
        return sorted(int(m.group(1)) for m in found if m)

    def _checkpoint_path(self, step: int) -> Path:
        return self.path / CHECKPOINTS / f"step_{step:07d}.safetensors"

    def save_checkpoint(self, state: TrainState) -> None:
        """Weights at state.step, then the resume state (in that order: the state never points past
        the last weights on disk)."""
        self.save_weights(state)
        tensors, meta = _flatten_state(state)
        _atomic_write(self.path / STATE, lambda tmp: save_file(tensors, str(tmp), meta))

    def save_weights(self, state: TrainState) -> None:
        """The weights at state.step only (a member of a batch: its resume state is the batch's)."""
        weights = {k: v.detach().contiguous().cpu() for k, v in state.model.items()}
        meta = {"step": str(state.step)}
        _atomic_write(self._checkpoint_path(state.step), lambda tmp: save_file(weights, str(tmp), meta))

    def load_weights(self, step: int, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The weights at `step` (only `names` if given: read lazily from the file)."""
        path = self._checkpoint_path(step)
        if not path.is_file():
            raise RunDirError(
                f"no checkpoint at step {step} in {self.path}; available: {self.checkpoint_steps()[-5:]} ..."
            )
        try:
            if names is None:
                return load_file(str(path))
            with safe_open(str(path), "pt") as f:
                missing = [name for name in names if name not in f.keys()]  # noqa: SIM118 (safe_open is no dict)
                if missing:  # a question for another model, not a damaged file
                    raise RunDirError(
                        f"checkpoint {path} has no weight {missing[0]!r}: this run's model has "
                        f"{', '.join(list(f.keys())[:4])}, ..."
                    )
                return {name: f.get_tensor(name) for name in names}
        except (SafetensorError, OSError, ValueError) as err:
            raise RunDirError(f"checkpoint {path} is corrupt ({err}); delete it to fall back to another") from None

    def has_state(self) -> bool:
        return (self.path / STATE).is_file()

    def load_state(self) -> TrainState:
        path = self.path / STATE
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            return _unflatten_state(tensors, meta)
        except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise RunDirError(
                f"resume state {path} is corrupt or unreadable ({type(err).__name__}); the run cannot be resumed"
            ) from None

    # -- summary and lock -------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.path / SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))

    def read_summary(self) -> dict:
        path = self.path / SUMMARY
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def write_source(self, source: dict) -> None:
        """Where an imported run came from (`groklab import`): format, file, notes, the file's own curves."""
        _atomic_write(self.path / SOURCE, lambda tmp: tmp.write_text(json.dumps(source) + "\n"))

    def read_source(self) -> dict:
        """The imported run's origin (`write_source`); {} for a run trained here."""
        path = self.path / SOURCE
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            raise RunDirError(f"{path} is corrupt (invalid JSON); the run's origin cannot be read") from None

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    def write_report(self, html: str) -> Path:
        _atomic_write(self.report_path, lambda tmp: tmp.write_text(html))
        return self.report_path

    def lock(self) -> Lock:
        return Lock(self.path / LOCK)


class Lock:
    """An exclusive, advisory lock held while a process trains the run (released by the OS on kill)."""

    def __init__(self, path: Path):
        self.path, self.file = path, None

    def __enter__(self) -> Lock:
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RunDirError(
                f"{self.path.parent} is being trained by another process; wait for it or stop it"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def save_states(path: Path, states: dict[str, TrainState]) -> None:
    """Several runs' resume states in one file, written atomically (a batch's: its members resume together)."""
    tensors, meta = {}, {"format": "groklab-states-1", "names": json.dumps(list(states))}
    for i, state in enumerate(states.values()):
        flat, flat_meta = _flatten_state(state)
        tensors.update({f"{i}/{k}": v for k, v in flat.items()})
        meta.update({f"{i}/{k}": v for k, v in flat_meta.items()})
    _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), meta))


def load_states(path: Path) -> dict[str, TrainState]:
    """The states `save_states` wrote, by name; RunDirError if the file is corrupt."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            names = json.loads(meta["names"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        states = {}
        for i, name in enumerate(names):
            prefix = f"{i}/"
            states[name] = _unflatten_state(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
                {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)},
            )
        return states
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise RunDirError(
            f"batch state {path} is corrupt or unreadable ({type(err).__name__}); delete it to "
            "restart the batch's unfinished runs"
        ) from None


def _flatten_state(state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A TrainState as flat safetensors: tensors by dotted name, the rest as JSON metadata."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in state.model.items()}
    opt = state.optimizer
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    for key, value in state.rng.items():
        tensors[f"rng.{key}"] = value.contiguous().cpu()
    for key, value in state.hooks.items():
        tensors[f"hooks.{key}"] = value.contiguous().cpu()
    meta = {
        "format": "groklab-state-1",
        "step": str(state.step),
        "elapsed_s": repr(state.elapsed_s),
        "streak": str(state.streak),
        "ended": state.ended or "",
        "param_groups": json.dumps(opt["param_groups"]),
    }
    return tensors, meta


def _unflatten_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> TrainState:
    if meta.get("format") != "groklab-state-1":
        raise ValueError("unknown state format")
    model, rng, opt_state, hooks = {}, {}, {}, {}
    for name, value in tensors.items():
        kind, rest = name.split(".", 1)
        if kind == "model":
            model[rest] = value
        elif kind == "rng":
            rng[rest] = value
        elif kind == "hooks":
            hooks[rest] = value
        else:
            index, key = rest.split(".", 1)
            opt_state.setdefault(int(index), {})[key] = value
    optimizer = {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
    return TrainState(
        int(meta["step"]),
        model,
        optimizer,
        rng,
        float(meta["elapsed_s"]),
        int(meta["streak"]),
        meta.get("ended") or None,
        hooks,
    )

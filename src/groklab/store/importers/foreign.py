"""A run trained elsewhere, read into groklab's terms: what the format importers (`nanda`, `transformer_lens`)
hand to `groklab.importing`, and the safe loader they read torch files with.

`load_torch` never runs code from a file: it loads with `weights_only=True` and gives every class the file
pickles besides tensors and plain data (a TransformerLens `HookedTransformerConfig`, the `Config` dataclass of
Nanda et al.'s notebooks) an inert stand-in, `Pickled`, that keeps the object's fields as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groklab.errors import UserError

ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", 0x80


class ForeignFileError(UserError):
    """A file that is missing, unreadable, not in the format asked for, or inconsistent with itself."""


@dataclass
class ForeignRun:
    """What an importer read: the weights at each step under groklab's names and shapes (TransformerLens
    names, `groklab.models.transformer`), the config it inferred as plain data (a `RunConfig` before
    validation and the user's `--set`), the file's own loss curves, and where each inferred value came from."""

    format: str
    path: Path
    config: dict
    checkpoints: dict[int, dict[str, torch.Tensor]]  # step -> state dict (groklab names and shapes)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # "train_loss" -> {step: value}
    notes: list[str] = field(default_factory=list)
    split: tuple[torch.Tensor, torch.Tensor] | None = None  # the file's train / test indices (enumeration order)
    curves_note: str = ""  # how the file computed its curves
    seed_hints: tuple[int, ...] = ()  # data seeds to try when the file's split is not its config's (not saved)


class Pickled:
    """An object a checkpoint pickled, kept as data, never constructed: its class path, the arguments it was
    rebuilt with, and its state (a dataclass's fields)."""

    path = ""

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.state = args, {}
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        self.state = state

    def fields(self) -> dict:
        return dict(self.state) if isinstance(self.state, dict) else {}

    def __repr__(self) -> str:
        return f"<{self.path}>"


def as_dict(obj: Any) -> dict | None:
    """A config as a dict: a dict, a `Pickled` object's fields, or a live object's public attributes."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Pickled):
        return obj.fields()
    if obj is not None and hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return None


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy's array, scalar and dtype rebuilders (a config's np.float64 fields pickle through them)."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / 1
    found = [
        (getattr(multiarray, name), f"{module}.{name}")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")  # files from either numpy
        for name in ("_reconstruct", "scalar")
    ]
    found += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes else []:
        obj = getattr(dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            found.append((obj, f"numpy.dtypes.{name}"))
    return found


def load_torch(path: str | Path, what: str = "a PyTorch checkpoint") -> Any:
    """The object a `torch.save` file holds (tensors on the CPU, memory-mapped when the file allows), or a
    safetensors file's tensors; foreign classes come back as `Pickled`. ForeignFileError: not such a file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise ForeignFileError(f"{path} is a directory; give the checkpoint file") from None
    except OSError as err:
        raise ForeignFileError(f"cannot read {path}: {err.strerror}") from None
    if len(head) == 8 and int.from_bytes(head, "little") < (1 << 28) and path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ForeignFileError(f"{path} is not a readable safetensors file ({err})") from None
    zipped = head.startswith(ZIP_MAGIC)
    if not zipped and not (head and head[0] == PICKLE_PROTOCOL):
        raise ForeignFileError(f"{path} is not {what} (not a file written by torch.save)")
    stand_ins = list(_numpy_globals())
    if zipped:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # noqa: BLE001  (a damaged archive: torch raises several kinds)
            raise ForeignFileError(f"{path} is not {what} (torch cannot open it: {_first_line(err)})") from None
        known = {name for _, name in stand_ins}
        stand_ins += [
            (type(name.rsplit(".", 1)[-1], (Pickled,), {"path": name}), name) for name in unsafe if name not in known
        ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as err:  # noqa: BLE001  (truncated files, unknown pickles: torch raises many kinds)
        raise ForeignFileError(f"{path} is not {what} (torch cannot load it: {_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """`obj` as a state dict (str -> tensor), or None if it is not one."""
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    return None


def need(weights: Mapping[str, torch.Tensor], name: str, ndim: int, path: Path, layout: str) -> torch.Tensor:
    """The weight `name`, which must exist with `ndim` dimensions; ForeignFileError naming it otherwise."""
    if name not in weights:
        raise ForeignFileError(f"{path} has no weight '{name}': not {layout}")
    tensor = weights[name]
    if tensor.ndim != ndim:
        raise ForeignFileError(
            f"{path}: '{name}' has shape {tuple(tensor.shape)}, but {layout} has a {ndim}-dimensional tensor there"
        )
    return tensor


def check_shape(name: str, tensor: torch.Tensor, want: tuple[int, ...], meaning: str, path: Path) -> None:
    if tuple(tensor.shape) != tuple(want):
        raise ForeignFileError(
            f"{path}: '{name}' has shape {tuple(tensor.shape)}, expected {tuple(want)} = ({meaning}) from the other weights"
        )


def losses(values: Any, name: str, path: Path) -> list[float]:
    """A loss curve (a list or tensor of numbers) as floats; ForeignFileError if it is something else."""
    try:
        if isinstance(values, torch.Tensor):
            return [float(v) for v in values.flatten().tolist()]
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ForeignFileError(f"{path}: '{name}' is not a list of numbers") from None


def train_fraction(n_train: int, n: int) -> float:
    """The shortest frac_train with int(frac_train * n) == n_train (groklab's cut): 0.3 for 3830 of 12769."""
    for digits in range(1, 8):
        frac = round(n_train / n, digits)
        if int(frac * n) == n_train:
            return frac
    return (n_train + 0.5) / n

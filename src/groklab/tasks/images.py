"""Image classification from the standard files on disk (no download, no torchvision):
MNIST's IDX files and CIFAR-100's python pickle batches, as Hu et al. 2023 train on them (§4.1;
spec training-maps.md §2.3).

- mnist: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
  `t10k-labels-idx1-ubyte` (each optionally `.gz`) in `task.path`; pixels scaled to [0, 1]
  (torchvision's ToTensor), inputs (n, 1, 28, 28).
- cifar100: the `train` and `test` pickles of `cifar-100-python/` in `task.path` (or the directory
  itself); fine labels; inputs (n, 3, 32, 32) normalised with CIFAR-100's channel mean and std;
  training batches augmented by a reflect-padded 4-pixel random crop and a horizontal flip.

`n_train` / `n_test` keep the first examples of each file (smoke tests, quick looks).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from groklab.errors import ConfigError
from groklab.tasks.base import Split, Task
from groklab.tasks.registry import register_task

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(None, description="directory holding the dataset's files")
    n_train: int | None = Field(None, ge=1)
    n_test: int | None = Field(None, ge=1)


def _directory(params: ImageParams, what: str) -> Path:
    if not params.path:
        raise ConfigError(f"task.path is required: the directory with the {what} (--set task.path=DIR)")
    path = Path(params.path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"task.path={params.path} is not a directory; give the directory with the {what}")
    return path


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic, big-endian dimensions, uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError):
        raise ConfigError(f"{path} is not a readable uint8 IDX file (MNIST format); check the file") from None


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(n for pair in MNIST_FILES.values() for n in pair)
    raise ConfigError(f"{directory} has no {name}[.gz]; MNIST needs {expected} (optionally .gz)")


@register_task("mnist", ImageParams)
def build_mnist(params: ImageParams, seed: int) -> Task:
    directory = _directory(params, "MNIST IDX files")
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x, y = read_idx(_find(directory, images)), read_idx(_find(directory, labels))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"{directory}: {images} and {labels} do not match (shapes {x.shape}, {y.shape})")
        n = getattr(params, f"n_{split}") or len(y)
        inputs = torch.from_numpy(x[:n].astype(np.float32) / 255.0)[:, None]  # (n, 1, 28, 28) in [0, 1]
        splits[split] = Split(inputs, torch.from_numpy(y[:n].astype(np.int64)), torch.arange(min(n, len(y))))
    return Task("mnist", splits["train"], splits["test"], n_classes=10, params=params.model_dump())


def _cifar_batch(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    for candidate in (directory / "cifar-100-python" / name, directory / name):
        if candidate.is_file():
            try:
                with open(candidate, "rb") as f:
                    batch = pickle.load(f, encoding="bytes")
                data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                return data, np.asarray(batch[b"fine_labels"], np.int64)
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError):
                raise ConfigError(
                    f"{candidate} is not a CIFAR-100 python batch (a pickle with b'data' and "
                    "b'fine_labels'); check the file"
                ) from None
    raise ConfigError(
        f"{directory} has no cifar-100-python/{name}; CIFAR-100 needs the python version's 'train' and 'test' files"
    )


def augment_cifar(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Reflect-pad by 4, crop 32x32 at a random offset, flip half of the images horizontally."""
    n = len(images)
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")  # (n, 3, 40, 40)
    dx, dy = torch.randint(0, 9, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(32))[:, None, :, None].expand(n, 3, 32, 40).to(images.device)
    out = padded.gather(2, rows)  # (n, 3, 32, 40)
    cols = (dx[:, None] + torch.arange(32))[:, None, None, :].expand(n, 3, 32, 32).to(images.device)
    out = out.gather(3, cols)  # (n, 3, 32, 32)
    flip = (torch.rand(n, generator=gen) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@register_task("cifar100", ImageParams)
def build_cifar100(params: ImageParams, seed: int) -> Task:
    directory = _directory(params, "CIFAR-100 python batches")
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    splits = {}
    for split in ("train", "test"):
        x, y = _cifar_batch(directory, split)
        n = getattr(params, f"n_{split}") or len(y)
        inputs = (torch.from_numpy(x[:n].astype(np.float32) / 255.0) - mean) / std  # (n, 3, 32, 32)
        splits[split] = Split(inputs, torch.from_numpy(y[:n]), torch.arange(min(n, len(y))))
    return Task(
        "cifar100", splits["train"], splits["test"], n_classes=100, params=params.model_dump(), augment=augment_cifar
    )

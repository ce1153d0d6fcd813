"""Importers of foreign checkpoints and metrics into groklab run and sweep directories (the store layer: the
only code that knows file layouts). One module per format; `groklab import FORMAT ...` calls them.

    from groklab.store.importers.hf import import_hf      # checkpoint series (MultiBERTs, Pythia) -> a sweep

Shared helpers, small on purpose: `staged` builds a directory next to its target and swaps it in whole, so
a failed import leaves no half-made run or sweep; `file_key` identifies a file's version for caches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from groklab.errors import RunDirError


@contextlib.contextmanager
def staged(out: str | Path, replaceable: Callable[[Path], bool] = lambda path: False) -> Iterator[Path]:
    """Yield an empty directory beside `out` to build into; when the block ends without an error it replaces
    `out` (which must be absent, empty, or `replaceable(out)`: e.g. an earlier import of the same kind); on an
    error it is removed and `out` is left as it was."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or replaceable(out))):
        raise RunDirError(f"{out} exists and is not an earlier import of this kind; choose another --out")
    tmp, old = out.parent / f".{out.name}.importing", out.parent / f".{out.name}.old"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise RunDirError(f"cannot create {tmp}: {err.strerror}; choose another --out") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def file_key(path: str | Path) -> str:
    """A file's version as caches key it: size and modification time (ns); a rewritten file gets a new key."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"

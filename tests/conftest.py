import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A shell starts a background job (`make test &`, `nohup ... &`) with SIGINT ignored, and every process the
# tests start would inherit that: the Ctrl-C tests would find their sweeps deaf to Ctrl-C. The tests send
# SIGINT on purpose, so their processes get the default disposition whatever the shell did.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _shared_data() -> Path:
    """The team's real-format samples (dyck/, mccoy/): $GROKLAB_SHARED_DATA, else ../shared/data next to the
    checkout, else the workspace's /work/shared/data (a clean clone elsewhere). Never copied into the project."""
    candidates = [os.environ.get("GROKLAB_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mccoy").is_dir():
            return Path(candidate)
    return ROOT.parent / "shared" / "data"  # missing: the tests that read it fail, naming this path


SHARED_DATA = _shared_data()


def groklab_cli(*args: str, cwd=None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the installed `groklab` console script (as a user would) and capture its output."""
    exe = Path(sys.executable).with_name("groklab")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kw)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`groklab ARGS` through the console script's own entry point (groklab.cli.main), in this process: the
    same parsing, errors and exit code, without starting Python and importing torch again (seconds per call)."""
    from groklab.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    return subprocess.CompletedProcess(["groklab", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return groklab_cli


# A tiny config that trains in seconds: tests of the machinery, not of grokking.
TINY = [
    "--set",
    "task.p=13",
    "--set",
    "task.frac_train=0.5",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_heads=2",
    "--set",
    "model.d_head=16",
    "--set",
    "model.d_mlp=64",
    "--set",
    "train.early_stop=null",
]


@pytest.fixture
def tiny():
    return list(TINY)


def write_idx(path: Path, array, gz: bool = False) -> None:
    """An IDX file as MNIST ships it: 0, 0x08 (uint8), ndim, big-endian dims, data."""
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """The `quick` preset run once, from the command line, with its report (its outcome: test_presets.py;
    its report: test_report.py)."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    result = groklab_cli("run", "quick", "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A tiny MNIST in the original IDX format (train files gzipped, test files not): the label is the
    brightest of ten image columns, so a model can learn it."""
    import numpy as np

    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 600, True), ("t10k", 200, False)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        images[np.arange(n), :, labels * 2 + 4] = 250
        write_idx(root / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A tiny CIFAR-100 in the python-pickle format (cifar-100-python/train, test)."""
    import pickle

    import numpy as np

    root = tmp_path_factory.mktemp("cifar")
    (root / "cifar-100-python").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": rng.integers(0, 100, n).tolist(),
            b"coarse_labels": [0] * n,
        }
        with open(root / "cifar-100-python" / split, "wb") as f:
            pickle.dump(batch, f)
    return root

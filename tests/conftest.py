import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def groklab_cli(*args: str, cwd=None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the installed `groklab` console script (as a user would) and capture its output."""
    exe = Path(sys.executable).with_name("groklab")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kw)


@pytest.fixture
def cli():
    return groklab_cli


# A tiny config that trains in seconds: tests of the machinery, not of grokking.
TINY = ["--set", "task.p=13", "--set", "task.frac_train=0.5", "--set", "model.d_model=32", "--set", "model.n_heads=2",
        "--set", "model.d_head=16", "--set", "model.d_mlp=64", "--set", "train.early_stop=null"]


@pytest.fixture
def tiny():
    return list(TINY)

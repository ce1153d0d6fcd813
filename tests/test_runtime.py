"""The process's compute settings (groklab.runtime): threads from the CPUs a process may use, bounded
OpenMP spin-waiting, denormals flushed in every thread while training."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY, groklab_cli

from groklab import runtime


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert runtime.cpu_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert runtime.cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cpu_quota(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cpu_quota(v1) is None
    assert runtime.cpu_quota(tmp_path / "none") is None


def test_cpu_threads_follow_the_affinity_mask():
    code = "import os, groklab.runtime as r; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(r.cpu_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
    assert 1 <= runtime.cpu_threads() <= len(os.sched_getaffinity(0))


def test_openmp_spin_is_bounded_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    show = "import os, groklab; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == runtime.SPINCOUNT
    out = subprocess.run(
        [sys.executable, "-c", show],
        env={**env, "OMP_WAIT_POLICY": "active"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "None"


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode")
def test_denormals_flushed_in_every_thread_while_training_only():
    """A large elementwise op is split across torch's OpenMP threads: every element must be flushed."""
    code = """
import torch, groklab.runtime as r
torch.set_num_threads(2)
x = torch.full((1 << 22,), 1e-39)  # a denormal float32
with r.denormals_flushed():
    inside = (x * 1.0 == 0).float().mean().item()
after = (x * 1.0 == 0).float().mean().item()
print(inside, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1.0", "0.0"]


def test_threads_option(tmp_path):
    out = tmp_path / "run"
    result = groklab_cli(
        "run",
        "nanda-mod-add",
        *TINY,
        "--set",
        "train.max_steps=20",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-report",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["threads"] == 1
    for command in (["run", "nanda-mod-add"], ["sweep", "nanda-mod-add"]):
        bad = groklab_cli(*command, "--threads", "0", "--out", str(tmp_path / "never"))
        assert bad.returncode == 2 and "--threads must be at least 1" in bad.stderr
        assert not (tmp_path / "never").exists()

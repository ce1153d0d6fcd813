"""A run killed (SIGKILL) at any moment resumes to exactly the run it would have been.

The kill comes from inside the process at an exact moment (tests/kill_at.py): before the first
checkpoint after step 0, between a metrics row and its checkpoint, between a checkpoint's weights and
its resume state, after the last checkpoint but before the summary, and after the checkpoint of an
early stop. The whole metrics table is compared with an uninterrupted run's: every column (the string
column key_freqs, the measure columns that are NaN between measure steps), all but the wall time.
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, groklab_cli

from groklab.store import Run

KILL_AT = Path(__file__).with_name("kill_at.py")
# evaluations every 10 steps, measures every 20 (NaN between), checkpoints every 40: 0, 40, 80, 120
LONG = [
    *TINY,
    "--set",
    "train.max_steps=120",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.checkpoint_every=40",
    "--set",
    "measures.every=20",
    "--no-report",
    "-q",
]
# stops early at an evaluation between two checkpoints: the stop writes its own checkpoint
EARLY = [
    *LONG,
    "--set",
    "train.early_stop={metric: train_loss, threshold: 2.4, patience: 2}",
    "--set",
    "train.max_steps=400",
]


def table(path: Path) -> pd.DataFrame:
    return Run(path).metrics.drop(columns="elapsed_s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}
    for name, args in (("long", LONG), ("early", EARLY)):
        out = tmp_path_factory.mktemp("runs") / name
        result = groklab_cli("run", "nanda-mod-add", *args, "--out", str(out))
        assert result.returncode == 0, result.stderr
        runs[name] = out
    return runs


def test_the_uninterrupted_runs_cover_the_cases(uninterrupted):
    long, early = table(uninterrupted["long"]), table(uninterrupted["early"])
    assert long["step"].tolist() == list(range(0, 121, 10))
    assert long["restricted_loss"].isna().any() and not pd.api.types.is_numeric_dtype(long["key_freqs"])  # NaN, strings
    summary = Run(uninterrupted["early"]).summary
    assert summary["status"] == "stopped_early" and summary["step"] % 40 != 0 and summary["step"] < 400
    assert early["step"].iloc[-1] == summary["step"]


@pytest.mark.parametrize(
    "name, event, n",
    [
        ("long", "metrics", 1),  # step 0's row written, its checkpoint not: nothing to resume from
        ("long", "checkpoint", 1),  # step 0 checkpointed, killed before the next checkpoint (issue 11)
        ("long", "metrics", 3),  # rows up to step 20 written, the resume state still at step 0
        ("long", "metrics", 5),  # step 40's row written, its checkpoint not
        ("long", "state", 2),  # step 40's weights written, its resume state not
        ("long", "metrics", 13),  # the last row written, the last checkpoint not
        ("long", "checkpoint", 4),  # the last checkpoint written, the final summary not
        ("early", "ended", 1),  # the early stop checkpointed, the final summary not
    ],
)
def test_sigkill_at_a_moment_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, name, event, n):
    args = LONG if name == "long" else EARLY
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, str(KILL_AT), event, str(n), "groklab", "run", "nanda-mod-add", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr  # it died of the kill, not of something else
    result = groklab_cli("run", "--resume", str(out), "--no-report", "-q")
    assert result.returncode == 0, result.stderr
    whole = uninterrupted[name]
    pd.testing.assert_frame_equal(table(out), table(whole))
    assert Run(out).steps == Run(whole).steps
    mine, theirs = Run(out).summary, Run(whole).summary
    assert (mine["status"], mine["step"]) == (theirs["status"], theirs["step"])


def test_resume_from_the_step_0_state_evaluates_step_0_once(uninterrupted, tmp_path):
    """The issue-11 case, read plainly: killed right after step 0's checkpoint, the resumed run has one step-0 row."""
    out = tmp_path / "killed"
    subprocess.run(
        [sys.executable, str(KILL_AT), "checkpoint", "1", "groklab", "run", "nanda-mod-add", *LONG, "--out", str(out)],
        capture_output=True,
        timeout=300,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0]
    assert groklab_cli("run", "--resume", str(out), "--no-report", "-q").returncode == 0
    steps = table(out)["step"].tolist()
    assert steps.count(0) == 1 and steps == sorted(set(steps))


def test_a_resumed_run_is_running_before_its_next_checkpoint(uninterrupted, tmp_path):
    """Killed after step 40's checkpoint, the run resumes; from its first step on it is 'running' (this
    process), not 'killed' (the dead process's summary) until its next checkpoint."""
    from groklab.experiment import resume

    out = tmp_path / "killed"
    subprocess.run(
        [sys.executable, str(KILL_AT), "checkpoint", "2", "groklab", "run", "nanda-mod-add", *LONG, "--out", str(out)],
        capture_output=True,
        timeout=300,
    )
    assert Run(out).status == "killed" and Run(out).steps[-1] == 40
    seen = []
    resume(out, report=False, progress=lambda step, row: seen.append((step, Run(out).status)))
    assert seen[0][0] > 40 and {status for _, status in seen} == {"running"} and Run(out).status == "finished"

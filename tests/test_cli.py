import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, cli_in_process, groklab_cli


def snapshot(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    result = groklab_cli(
        "run",
        "nanda-mod-add",
        *TINY,
        "--set",
        "train.max_steps=30",
        "--set",
        "train.eval_every=10",
        "--out",
        str(out),
        "-q",
    )
    assert result.returncode == 0, result.stderr
    return out


def test_run_show_and_presets(finished_run):
    show = groklab_cli("show", str(finished_run))
    assert show.returncode == 0
    assert "finished" in show.stdout and "30 of 30" in show.stdout
    presets = groklab_cli("presets")
    assert presets.returncode == 0
    for name in ("nanda-mod-add", "power-mod-div", "quick"):
        assert name in presets.stdout
    assert presets.stdout.count("source:") == presets.stdout.count("expected:") >= 3


def bad(args, match, run_dir=None, tmp_path=None):
    """A user error: exit code 2, one line on stderr saying what is wrong, and no existing run changed."""
    before = snapshot(run_dir) if run_dir else None
    result = cli_in_process(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert match in lines[0], lines[0]
    if run_dir:
        assert snapshot(run_dir) == before, "an existing run was modified"


def test_the_console_script_exits_2_with_one_line_on_a_user_error():
    result = groklab_cli("run", "nanda-mod-ad")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "unknown preset 'nanda-mod-ad'" in lines[0]


@pytest.mark.parametrize(
    "args, match",
    [
        (["run", "nanda-mod-ad"], "unknown preset 'nanda-mod-ad'; did you mean 'nanda-mod-add'"),
        (["run", "nanda-mod-add", "--set", "train.lrr=0.1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
        (["run", "nanda-mod-add", "--set", "train.lr=fast"], "train.lr"),
        (["run", "nanda-mod-add", "--set", "train.batch_size=-3"], "train.batch_size"),
        (["run", "nanda-mod-add", "--set", "task.name=div", "--set", "task.p=100"], "task.p=100 is not prime"),
        (["run", "nanda-mod-add", "--set", "task.frac_train=1.2"], "task.frac_train"),
        (["run", "nanda-mod-add", "--set", "task.frac_train=0"], "task.frac_train"),
        (["run", "nanda-mod-add", "--set", "model.n_heads=zero"], "model.n_heads"),
        (["run", "nanda-mod-add", "--set", "train.early_stop.metric=accuracy"], "train.early_stop.metric"),
        (["run", "nanda-mod-add", "--set", "trainlr"], "--set expects key.path=value"),
        (["run", "nanda-mod-add", "--device", "cuda:7"], "cuda:7"),
        (["run", "nanda-mod-add", "--device", "tpu"], "device"),
        (["run", "missing.yaml"], "config file not found"),
        (["run"], "give a PRESET"),
        (["run", "--resume", "/nonexistent/run"], "no run directory at /nonexistent/run"),
        (["show", "/nonexistent/run"], "no run directory"),
        (["run", "nanda-mod-add", "--seed", "x"], "--seed"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, match):
    bad(args, match)


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad(["run", "nanda-mod-add", "--out", str(blocker / "run")], "cannot create run directory")


def test_existing_run_is_never_touched(finished_run, tmp_path):
    bad(["run", "nanda-mod-add", "--out", str(finished_run)], "already exists; resume it", run_dir=finished_run)
    bad(["run", "nanda-mod-add", "--set", "train.lr=-1", "--out", str(finished_run)], "train.lr", run_dir=finished_run)
    bad(["run", "nanda-mod-add", "--resume", str(finished_run)], "--resume continues a run", run_dir=finished_run)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: [unclosed\n")
    bad(["run", str(path)], "not valid YAML")
    path.write_text("- just\n- a list\n")
    bad(["run", str(path)], "must be a YAML mapping")


def test_resume_of_a_missing_or_corrupt_run(finished_run, tmp_path):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    bad(["run", "--resume", str(not_a_run)], "is not a groklab run")
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(finished_run), str(broken)], check=True)
    summary = json.loads((broken / "summary.json").read_text())
    summary["status"] = "running"  # pretend it was killed, so resume tries to load its state
    (broken / "summary.json").write_text(json.dumps(summary))
    (broken / "state.safetensors").write_bytes(b"\x00garbage")
    bad(["run", "--resume", str(broken)], "corrupt", run_dir=broken)
    (broken / "config.yaml").write_text("task: [unclosed\n")
    bad(["run", "--resume", str(broken)], "corrupt", run_dir=broken)
    bad(["show", str(broken)], "corrupt", run_dir=broken)


def test_resume_of_a_finished_run_does_nothing(finished_run):
    before = snapshot(finished_run)
    result = groklab_cli("run", "--resume", str(finished_run))
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert snapshot(finished_run) == before


LONG = [*TINY, "--set", "train.max_steps=1500", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=40"]


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [-1]
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            steps.append(json.loads(line)["step"])
    return max(steps)


def wait_for_step(run_dir: Path, step: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while last_step(run_dir) < step:
        assert proc.poll() is None and time.time() < deadline, f"run did not reach step {step}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    result = groklab_cli("run", "nanda-mod-add", *LONG, "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return metrics_without_time(out)


@pytest.mark.parametrize("kill_at", [130, 517])
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, kill_at):
    out = tmp_path / "killed"
    exe = Path(sys.executable).with_name("groklab")
    proc = subprocess.Popen(
        [str(exe), "run", "nanda-mod-add", *LONG, "--out", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_step(out, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    show = groklab_cli("show", str(out))  # a killed run is still loadable
    assert show.returncode == 0 and "killed" in show.stdout
    killed_rows = metrics_without_time(out)
    assert killed_rows and len(killed_rows) < len(uninterrupted)
    result = groklab_cli("run", "--resume", str(out), "-q")
    assert result.returncode == 0, result.stderr
    assert metrics_without_time(out) == uninterrupted
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_sigterm_checkpoints_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "stopped"
    exe = Path(sys.executable).with_name("groklab")
    proc = subprocess.Popen(
        [str(exe), "run", "nanda-mod-add", *LONG, "--out", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(out, 300, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "groklab run --resume" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] >= 300
    assert (out / "checkpoints" / f"step_{summary['step']:07d}.safetensors").is_file()
    assert groklab_cli("run", "--resume", str(out), "-q").returncode == 0
    assert metrics_without_time(out) == uninterrupted


def test_run_from_a_yaml_file(tmp_path):
    from groklab.config import load_preset, to_yaml

    text = to_yaml(load_preset("quick")).replace("max_steps: 10000", "max_steps: 20")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    result = groklab_cli("run", str(path), "--set", "train.eval_every=10", "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 10, 20]


def test_measure_command(tmp_path):
    out = tmp_path / "run"
    assert (
        groklab_cli(
            "run",
            "quick",
            "--set",
            "train.max_steps=30",
            "--set",
            "train.eval_every=10",
            "--set",
            "train.checkpoint_every=10",
            "--out",
            str(out),
            "-q",
        ).returncode
        == 0
    )
    result = groklab_cli("measure", str(out), "--key-freqs", "3,5")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["key_freqs"] for r in rows] == ["3,5"] * 4 and all("gini_W_L" in r for r in rows)
    bad(["measure", str(out), "--key-freqs", "three"], "--key-freqs takes final, each or a list")
    bad(["measure", str(out), "--key-freqs", "99"], "key frequencies must lie in 1..15")
    bad(["measure", str(out), "--names", "weights,entropy"], "unknown measure set 'entropy'")
    bad(["measure", str(tmp_path / "nothing")], "no run directory")
    other = tmp_path / "mul"
    assert (
        groklab_cli(
            "run",
            "quick",
            "--set",
            "task.name=mul",
            "--set",
            "train.max_steps=10",
            "--set",
            "measures=null",
            "--out",
            str(other),
            "-q",
        ).returncode
        == 0
    )
    bad(["measure", str(other)], "modular addition", run_dir=other)

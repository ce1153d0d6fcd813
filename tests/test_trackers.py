"""`--report-to tensorboard|wandb|mlflow`: what each tracker wrote, read back with the tracker's own reader
(TensorBoard's EventAccumulator, MlflowClient, W&B's `wandb leet inspect` of the offline .wandb log), equals
the run's metrics.jsonl; resume continues the same tracker runs without repeating rows; a sweep groups its
runs; a tracker that cannot start fails before the run directory exists; one that fails mid-run is dropped
with a warning and the run finishes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli_in_process, groklab_cli

import groklab
from groklab.config import load_config
from groklab.store import trackers

# measure columns in every row, none recomputed after training (key_freqs: final would rewrite the Fourier ones)
SMALL = [*TINY, "--set", "train.max_steps=30", "--set", "train.eval_every=10", "--set", "measures.every=10"]
SMALL += ["--set", "measures.names=[weights]"]


def config(*more: str):
    items = [*SMALL, *more]
    return load_config("nanda-mod-add", items[1::2])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def columns(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value), ...]} of the numeric columns, as the trackers get them."""
    out: dict[str, list] = {}
    for row in rows:
        for key, value in trackers.numeric(row).items():
            out.setdefault(key, []).append((row["step"], value))
    return out


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: every event, none sampled away
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(table: dict) -> dict:
    """TensorBoard keeps scalars as float32."""
    return {k: [(s, float(np.float32(v))) for s, v in points] for k, points in table.items()}


def mlflow_client(store: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store.resolve() / 'mlflow.db'}")


def mlflow_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def wandb_records(run_dir: Path) -> list[list[dict]]:
    """The records of each offline W&B run under RUN_DIR/wandb (oldest first), read with wandb's own reader."""
    exe = Path(sys.executable).with_name("wandb")
    out = []
    for log in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        text = subprocess.run([str(exe), "leet", "inspect", "--json", str(log)], capture_output=True, text=True).stdout
        out.append([json.loads(line) for line in text.splitlines() if line.startswith("{")])
    return out


def wandb_history(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for record in records:
        if record["type"] == "history":
            item = record["history"]["item"]
            for key, value in item.items():
                if not key.startswith("_"):
                    out.setdefault(key, []).append((item["_step"], value))
    return out


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> Path:
    """One tiny run from the command line (its entry point, in this process), mirrored to every tracker."""
    out = tmp_path_factory.mktemp("runs") / "mirrored"
    args = ["run", "nanda-mod-add", *SMALL, "--out", str(out), "-q"]
    result = cli_in_process(*args, "--report-to", "tensorboard", "--report-to", "wandb,mlflow")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    return out


def test_tensorboard_event_files_hold_the_metrics(mirrored):
    expected = columns(metrics(mirrored))
    assert "train_loss" in expected and "sum_sq_weights" in expected and len(expected["test_acc"]) == 4
    assert tensorboard_scalars(mirrored / "tensorboard") == as_float32(expected)


def test_mlflow_store_holds_the_metrics_params_and_report(mirrored):
    client = mlflow_client(mirrored / "mlflow")
    experiment = client.get_experiment_by_name("nanda-mod-add")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "mirrored" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["task.p"] == "13"
    assert mlflow_history(client, run.info.run_id) == columns(metrics(mirrored))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.html", "metrics.jsonl"}
    assert json.loads((mirrored / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id


def test_wandb_offline_run_holds_the_metrics_config_and_report(mirrored):
    (records,) = wandb_records(mirrored)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["project"] == "groklab" and run["display_name"] == "mirrored"
    assert run["run_id"] == json.loads((mirrored / "trackers.json").read_text())["wandb"]["id"]
    config = run["config"]["update"]
    assert config["train"]["lr"] == 0.001 and config["task"]["p"] == 13
    assert wandb_history(records) == columns(metrics(mirrored))
    assert {r["artifact"]["type"] for r in records if r["type"] == "artifact"} == {"report", "metrics"}
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


class Stop(Exception):
    pass


def test_resume_continues_the_same_tracker_runs_without_repeating_rows(tmp_path):
    """Killed (an exception) after the step-20 checkpoint, with row 25 already mirrored; resumed: one tracker
    run each, every step once, equal to the finished metrics."""
    out = tmp_path / "run"
    cfg = config("--set", "train.eval_every=5", "--set", "train.checkpoint_every=10", "--set", "measures.every=5")
    names = ("tensorboard", "mlflow", "wandb")

    def stop_at_25(step, row):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        groklab.run(cfg, out, progress=stop_at_25, report=False, report_to=names)
    first = json.loads((out / "trackers.json").read_text())
    assert {name: first[name]["step"] for name in names} == dict.fromkeys(names, 25)
    groklab.resume(out, report=False, report_to=names)
    expected = columns(metrics(out))
    steps = list(range(0, 31, 5))
    assert [s for s, _ in expected.pop("elapsed_s")] == steps  # row 25's: the retrained one's time

    def same(mirrored: dict) -> bool:
        """Every step once; the values as in metrics.jsonl (row 25's elapsed_s: as first measured)."""
        return [s for s, _ in mirrored.pop("elapsed_s")] == steps and mirrored == expected

    tensorboard = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in tensorboard.pop("elapsed_s")] == steps and tensorboard == as_float32(expected)
    client = mlflow_client(out / "mlflow")
    (run,) = client.search_runs([client.get_experiment_by_name("nanda-mod-add").experiment_id])
    assert run.info.run_id == first["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert same(mlflow_history(client, run.info.run_id))
    sessions = wandb_records(out)  # W&B offline: one directory per session, the same run id, resumed
    assert len(sessions) == 2
    assert {r["run"]["run_id"] for records in sessions for r in records if r["type"] == "run"} == {first["wandb"]["id"]}
    assert same(wandb_history([r for records in sessions for r in records]))


def test_a_finished_run_resumed_with_a_tracker_is_sent_to_it_whole(tmp_path):
    """Trained without a tracker, then `groklab run --resume RUN --report-to tensorboard`: every row, once,
    even when asked twice; nothing retrained."""
    out = tmp_path / "run"
    groklab.run(config(), out, report=False)
    before = (out / "metrics.jsonl").read_text()
    for _ in range(2):
        result = cli_in_process("run", "--resume", str(out), "--report-to", "tensorboard")
        assert result.returncode == 0 and "sent to tensorboard" in result.stdout, result.stderr
    assert (out / "metrics.jsonl").read_text() == before
    assert tensorboard_scalars(out / "tensorboard") == as_float32(columns(metrics(out)))


def test_a_sweep_groups_its_runs_in_one_mlflow_experiment(tmp_path):
    """Two seeds trained as one batch by a worker process, each member its own MLflow run in the sweep's store
    and experiment: each run's history equals its metrics.jsonl."""
    out = tmp_path / "tiny-sweep"
    args = ["sweep", "nanda-mod-add", *SMALL, "--seeds", "0-1", "--batch", "2", "--threads", "1"]
    result = groklab_cli(*args, "--out", str(out), "--report-to", "mlflow")
    assert result.returncode == 0, result.stderr
    client = mlflow_client(out / "mlflow")
    runs = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed_0000", "seed_0001"]
    for run in runs:
        run_dir = out / "runs" / run.info.run_name
        assert run.info.status == "FINISHED"
        assert mlflow_history(client, run.info.run_id) == columns(metrics(run_dir))
    assert "batch" in json.loads((out / "runs" / "seed_0000" / "summary.json").read_text())


@pytest.mark.parametrize(
    "command, missing, match",
    [
        (["run", "nanda-mod-add", *SMALL, "--report-to", "neptune"], None, "--report-to takes tensorboard, wandb or"),
        (["run", "nanda-mod-add", *SMALL, "--report-to", "wandb"], "wandb", "pip install 'groklab[wandb]'"),
        (["sweep", "nanda-mod-add", *SMALL, "--report-to", "mlflow"], "mlflow", "pip install 'groklab[mlflow]'"),
    ],
)
def test_a_tracker_that_is_not_there_fails_in_one_line_before_the_run_directory(
    tmp_path, monkeypatch, command, missing, match
):
    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # `import wandb` raises ImportError
    result = cli_in_process(*command, "--out", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and match in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


class Fake:
    """A test-only tracker: records what it is given; `fail` names the call that raises."""

    package = extra = "fake"
    fail: str | None = None
    seen: list = []

    @staticmethod
    def check() -> None:
        pass

    def __init__(self, where, state):
        self.where, self.state, self.logged = where, state, state.get("step", -1)

    def start(self, config):
        self._call("start", config["name"])

    def log(self, row, step):
        self._call("log", step)

    def flush(self):
        pass

    def artifact(self, path):
        self._call("artifact", path.name)

    def finish(self, status):
        self._call("finish", status)

    def _call(self, what, arg):
        type(self).seen.append((what, arg))
        if what == type(self).fail or (what == "log" and type(self).fail == "log-10" and arg == 10):
            raise OSError(f"{what} broke")


class Broken(Fake):
    seen: list = []


def test_a_tracker_that_cannot_start_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.TRACKERS, "broken", Broken)
    monkeypatch.setattr(Broken, "fail", "start")
    with pytest.raises(groklab.ConfigError, match=r"--report-to broken: cannot start \(OSError: start broke\)"):
        groklab.run(config(), tmp_path / "run", report=False, report_to="broken")
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(trackers.TRACKERS, "broken", Broken)
    monkeypatch.setitem(trackers.TRACKERS, "fake", Fake)
    monkeypatch.setattr(Broken, "fail", "log-10")
    monkeypatch.setattr(Broken, "seen", [])
    monkeypatch.setattr(Fake, "seen", [])
    run = groklab.run(config(), tmp_path / "run", report_to=("broken", "fake"))
    assert run.status == "finished" and run.metrics["step"].tolist() == [0, 10, 20, 30]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "tracker broken failed (OSError: log broke)" in warnings[0], warnings
    assert Broken.seen == [("start", "nanda-mod-add"), ("log", 0), ("log", 10)]  # and nothing after
    logs = [("log", s) for s in (0, 10, 20, 30)]
    artifacts = [("artifact", "report.html"), ("artifact", "metrics.jsonl")]
    assert Fake.seen == [("start", "nanda-mod-add"), *logs, *artifacts, ("finish", "finished")]
    saved = json.loads((run.path / "trackers.json").read_text())
    assert saved == {"broken": {"step": 0}, "fake": {"step": 30}}  # a resume would give broken what it missed

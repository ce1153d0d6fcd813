"""Experiment trackers: TensorBoard, MLflow and Weights & Biases mirror a run as it trains (`--report-to`).

Local files stay the truth; a tracker only mirrors them. `Mirror` is a sink beside the store's recorder
(`groklab.experiment.Recorder`): the trainer reports each evaluation row and checkpoint to it, the
recorder writes them first, then every tracker logs the row. One small class per tracker, behind one
narrow interface, each importing its package only when asked for (groklab works without the extras):

    tracker.start(config)      open the tracker's run (a new one, or the run's own on resume)
    tracker.log(row, step)     one evaluation row's numeric columns at `step`
    tracker.flush()            at each checkpoint
    tracker.artifact(path)     attach a file (the report, the metrics table) at the end
    tracker.finish(status)     close the tracker's run with the run's status

Why the store layer: trackers write files into run and sweep directories (and a tracker's ids, to continue
the same tracker run on resume), and only `store` knows those layouts. Everything is offline, no account:

    RUN_DIR/tensorboard/events.out.tfevents.*   TensorBoard event files (scalars; the config as text)
    RUN_DIR/wandb/offline-run-*/                W&B offline runs (one per session; `wandb sync` uploads them)
    RUN_DIR/mlflow/mlflow.db, mlflow/artifacts/ an MLflow SQLite store (a sweep: SWEEP_DIR/mlflow/, shared)
    RUN_DIR/trackers.json                       each tracker's run id and the last step it mirrored

Failure rules: a tracker that cannot start raises `TrackerError` (a ConfigError: one line, exit code 2)
before training starts; one that fails later is warned about once on stderr and dropped, and the run
goes on.

Resume continues the same tracker run, and rows already mirrored are not logged again: TensorBoard
writes into the same directory with `purge_step` (the reader drops the orphaned rows a killed run logged
after its last checkpoint), MLflow reopens its run by id and asks it which steps it has, W&B resumes
its run id in a new offline-run directory (rows past the last checkpoint may be logged twice there;
W&B drops non-increasing steps when it syncs).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from groklab.errors import ConfigError
from groklab.store.run_dir import METRICS, REPORT, _atomic_write
from groklab.store.sweep_dir import RUNS

STATE = "trackers.json"
DONE = ("finished", "stopped_early", "diverged")


class TrackerError(ConfigError):
    """A tracker that cannot start (not installed, misconfigured, unknown)."""


@dataclass(frozen=True)
class Where:
    """Where a tracker's run lives and what it is called."""

    run: Path  # the run directory
    name: str  # the tracker run's name: the run directory's name, a sweep's run path under runs/
    group: str | None  # a sweep's name: W&B group, MLflow experiment
    home: Path  # the directory of stores shared by the group: the sweep's, else the run's own


def numeric(row: dict) -> dict[str, float]:
    """A metrics row's numeric columns but the step."""
    return {
        k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoard:
    """Scalars (float32, as TensorBoard stores them) in RUN_DIR/tensorboard/; the config as text at step 0."""

    package, extra = "tensorboard", "tensorboard"

    @staticmethod
    def check() -> None:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    def __init__(self, where: Where, state: dict):
        self.where, self.state = where, state
        self.logged = state.get("step", -1)

    def start(self, config: dict) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        resumed = self.logged >= 0  # TensorBoard drops what an earlier session logged past this step
        self.writer = SummaryWriter(
            str(self.where.run / "tensorboard"), purge_step=self.logged + 1 if resumed else None
        )
        if not resumed:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log(self, row: dict, step: int) -> None:
        for key, value in row.items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def artifact(self, path: Path) -> None:
        """None: TensorBoard holds no files (the report lies beside the event files, in the run directory)."""

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, max(self.logged, 0))
        self.writer.close()


class MLflow:
    """An MLflow run in a local SQLite store (MLflow 3 keeps its file store in maintenance mode): the
    run's own RUN_DIR/mlflow/mlflow.db, or a sweep's SWEEP_DIR/mlflow/mlflow.db with one experiment named
    after the sweep. Params: the config, flattened (train.lr, ...)."""

    package, extra = "mlflow", "mlflow"

    @staticmethod
    def check() -> None:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # before mlflow is imported: it reads it then
        import alembic  # noqa: F401  (the SQL store's; mlflow-skinny leaves them out)
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401

    @staticmethod
    def prepare(home: Path, experiment: str):
        """The store and the experiment, made once (a sweep: by its driver, before its workers share them)."""
        import logging

        from mlflow import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables...", at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        root = (home / "mlflow").resolve()
        root.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        return client, client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())

    def __init__(self, where: Where, state: dict):
        self.where, self.state = where, state
        self.logged = state.get("step", -1)

    def start(self, config: dict) -> None:
        from mlflow.entities import Param, RunTag

        experiment = self.where.group or config.get("name") or "groklab"
        self.client, experiment_id = self.prepare(self.where.home, experiment)
        if "run_id" in self.state:
            run_id = self.state["run_id"]
            self.client.update_run(run_id, status="RUNNING")
            data = self.client.get_run(run_id).data
            if data.metrics:  # the steps it has, past the last checkpoint too (a killed run's)
                history = self.client.get_metric_history(run_id, next(iter(data.metrics)))
                self.logged = max([self.logged, *(m.step for m in history)])
            return
        tags = [RunTag("groklab.run_dir", str(self.where.run.resolve()))]
        run = self.client.create_run(experiment_id, run_name=self.where.name)
        self.state["run_id"] = run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
        for i in range(0, max(len(params), 1), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=params[i : i + 100], tags=tags if i == 0 else [])

    def log(self, row: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in row.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.state["run_id"], metrics=metrics[i : i + 1000])

    def flush(self) -> None:
        pass

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.state["run_id"], str(path))

    def finish(self, status: str) -> None:
        run_id = self.state["run_id"]
        self.client.set_tag(run_id, "groklab.status", status)
        ended = "FINISHED" if status in DONE else "KILLED" if status in ("interrupted", "killed") else "FAILED"
        self.client.set_terminated(run_id, ended)


class Wandb:
    """A W&B run in offline mode under RUN_DIR/wandb/ (never online, whatever the environment says); a
    sweep's runs in one group named after the sweep. Project: $WANDB_PROJECT, else groklab."""

    package, extra = "wandb", "wandb"

    @staticmethod
    def check() -> None:
        os.environ["WANDB_ERROR_REPORTING"] = "false"  # no crash reports from W&B's service process either
        import wandb  # noqa: F401

    def __init__(self, where: Where, state: dict):
        self.where, self.state = where, state
        self.logged = state.get("step", -1)

    def start(self, config: dict) -> None:
        import wandb

        settings = wandb.Settings(
            mode="offline",
            silent=True,
            console="off",  # groklab's own output stays as it is
            x_disable_stats=True,  # no system-metrics sampler
            x_disable_machine_info=True,
            disable_git=True,
            disable_code=True,
            x_save_requirements=False,
            reinit="create_new",  # the members of a batch: several runs in one process
        )
        self.state.setdefault("id", uuid.uuid4().hex[:12])  # a W&B run id: lowercase letters and digits
        self.run = wandb.init(
            dir=str(self.where.run),
            project=os.environ.get("WANDB_PROJECT") or "groklab",
            group=self.where.group,
            name=self.where.name,
            id=self.state["id"],
            resume="allow",
            config=config,
            settings=settings,
        )

    def log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def flush(self) -> None:
        pass

    def artifact(self, path: Path) -> None:
        """A copy in the offline run's files (what `wandb sync` uploads stays as it was logged)."""
        import wandb

        copy = Path(self.run.dir) / path.name
        shutil.copyfile(path, copy)
        kind = path.stem.replace(".", "-")
        artifact = wandb.Artifact(f"{kind}-{self.state['id']}", type=kind)
        artifact.add_file(str(copy), policy="immutable")
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in DONE else 1)


TRACKERS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow}


@dataclass(frozen=True)
class ReportTo:
    """What a run mirrors to: tracker names, and for a sweep's runs the group and its directory."""

    names: tuple[str, ...] = ()
    group: str | None = None  # the sweep's name
    home: Path | None = None  # the sweep's directory: stores its runs share (MLflow's)

    @classmethod
    def of(cls, value: str | Sequence[str] | ReportTo | None) -> ReportTo:
        """Names ("tensorboard", ["wandb", "mlflow"]) or a ReportTo, checked: TrackerError in one line for a
        name that is not a tracker or a tracker whose package is not installed."""
        if isinstance(value, ReportTo):
            spec = value
        else:
            names = [value] if isinstance(value, str) else list(value or ())
            names = [part.strip().lower() for name in names for part in name.split(",") if part.strip()]
            spec = cls(tuple(dict.fromkeys(names)))  # "wandb,mlflow" as well; each once
        for name in spec.names:
            if name not in TRACKERS:
                *others, last = TRACKERS
                raise TrackerError(f"--report-to takes {', '.join(others)} or {last}; got '{name}'")
            tracker = TRACKERS[name]
            try:
                tracker.check()
            except ImportError as err:
                raise TrackerError(
                    f"--report-to {name}: {tracker.package} is not installed here ({err}); "
                    f"pip install 'groklab[{tracker.extra}]'"
                ) from None
        return spec

    def __bool__(self) -> bool:
        return bool(self.names)

    def prepare(self, config: dict) -> None:
        """Make the stores a group's runs share, once, before they start (a sweep's driver)."""
        if "mlflow" in self.names and self.home is not None:
            try:
                MLflow.prepare(self.home, self.group or config.get("name") or "groklab")
            except Exception as err:
                raise TrackerError(f"--report-to mlflow: cannot open its store in {self.home}: {_line(err)}") from None


class Mirror:
    """The run's sink when it reports to trackers: `sink` (the recorder) first, then every tracker. A
    tracker that fails while the run goes is warned about once on stderr and dropped."""

    def __init__(self, spec: ReportTo, run_dir: Path, sink):
        run_dir = Path(run_dir)
        home = Path(spec.home) if spec.home is not None else run_dir
        runs = home / RUNS
        name = str(run_dir.relative_to(runs)) if run_dir.is_relative_to(runs) else run_dir.name
        self.where = Where(run_dir, name, spec.group, home)
        self.spec, self.sink = spec, sink
        self.trackers, self.started = [], []  # (name, tracker): those mirroring; all that started

    def start(self, config: dict, rows: Sequence[dict]) -> Mirror:
        """Open every tracker's run (TrackerError when one cannot start) and mirror the rows the run already
        has that it lacks (a tracker new to a resumed run gets them all)."""
        saved = _read(self.where.run / STATE)
        for name in self.spec.names:
            tracker = TRACKERS[name](self.where, dict(saved.get(name, {})))
            try:
                tracker.start(config)
            except Exception as err:
                self.finish("failed")
                raise TrackerError(f"--report-to {name}: cannot start ({_line(err)})") from None
            self.trackers.append((name, tracker))
            self.started.append((name, tracker))
        for row in rows:
            self._mirror(row)
        self._save()
        return self

    def on_eval(self, row: dict) -> None:
        self.sink.on_eval(row)
        self._mirror(row)

    def on_checkpoint(self, state) -> None:
        self.sink.on_checkpoint(state)
        for name, tracker in list(self.trackers):
            self._guard(name, tracker, tracker.flush)
        self._save()

    def finish(self, status: str) -> None:
        """Attach the run's report and metrics table (its final values: measures recomputed after training
        included) unless the run failed, and close every tracker's run with the run's status; idempotent."""
        if status not in ("failed", "killed"):
            paths = [path for path in (self.where.run / REPORT, self.where.run / METRICS) if path.is_file()]
            for name, tracker in list(self.trackers):
                all(self._guard(name, tracker, tracker.artifact, path) for path in paths)
        self._save()
        for name, tracker in list(self.trackers):
            self._guard(name, tracker, tracker.finish, status)
        self.trackers = []

    def _mirror(self, row: dict) -> None:
        step, values = int(row["step"]), numeric(row)
        for name, tracker in list(self.trackers):
            if step > tracker.logged and self._guard(name, tracker, tracker.log, values, step):
                tracker.logged = step

    def _guard(self, name: str, tracker, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as err:
            self.trackers.remove((name, tracker))
            print(
                f"groklab: warning: tracker {name} failed ({_line(err)}); it no longer mirrors {self.where.run}, "
                "which goes on (its files are the record)",
                file=sys.stderr,
                flush=True,
            )
            return False

    def _save(self) -> None:
        """Each tracker's ids and last step mirrored (a dropped one's too: a resume gives it what it missed)."""
        if not self.started:
            return
        saved = _read(self.where.run / STATE)
        saved.update({name: {**tracker.state, "step": tracker.logged} for name, tracker in self.started})
        _atomic_write(self.where.run / STATE, lambda tmp: tmp.write_text(json.dumps(saved, indent=2) + "\n"))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _line(err: BaseException) -> str:
    """An exception in one short line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"

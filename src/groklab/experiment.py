"""One run, end to end: validate, create the run directory, train, record, summarize, resume.

`groklab run X` is `groklab.run(groklab.load_preset("X"))`. Everything a user can get wrong is
checked before the run directory is created, so a bad config never leaves a half-made run and
never touches an existing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from pydantic import BaseModel

from groklab import runtime
from groklab.config import (
    MeasuresConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    apply_overrides,
    config_from_dict,
    to_yaml,
)
from groklab.dynamics import detect_phases, detect_stages, phase_evidence, summarize
from groklab.dynamics.summary import is_structural
from groklab.errors import ConfigError, RunDirError
from groklab.measures import check_measures, final_key_frequencies, make_measures
from groklab.models import build_model, model_config, resolved_params
from groklab.store import Run, RunDir, load_states, save_states
from groklab.store.trackers import Mirror, ReportTo, TrackerError
from groklab.tasks import Task, build_task, task_params
from groklab.training import Outcome, Population, Probe, Trainer, TrainState
from groklab.training.population import MEMBER_HPARAMS

DONE = ("finished", "stopped_early", "diverged")
EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
BASE_COLUMNS = ("step", *EVAL_COLUMNS, "elapsed_s")  # everything else in a metrics row is a measure
Progress = Callable[[int, dict | None], None]


@dataclass(frozen=True)
class Prepared:
    config: RunConfig  # resolved: seeds, task and model parameters with every default filled in
    task: Task
    model: BaseModel  # the model's validated config
    device: torch.device


def resolve_device(spec: str, here: bool = True) -> torch.device:
    """auto (CUDA when available, else CPU) | cpu | cuda | cuda:N. `here=False`: only check the name (the
    runs train on other machines, a cluster's, whose devices this one cannot see)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{spec}' requested but CUDA is not available here; use --device cpu "
                "(or install a CUDA build of torch, see README)"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve(config: RunConfig, device: str | None = None) -> Prepared:
    """Validate everything and fill in every default; raises ConfigError with a one-line message."""
    data_seed, model_seed = config.resolved_data_seed, config.resolved_model_seed
    params = task_params(config.task)
    task = build_task(config.task, data_seed)
    model = model_config(config.model, task)
    if config.measures is not None:
        check_measures(config.measures, task)
    if config.train.loss_fn == "stablemax" and task.loss == "hinge":
        raise ConfigError(
            f"config: train.loss_fn 'stablemax' needs class outputs, but task '{task.name}' is trained "
            "with a hinge loss on one output; use loss_fn cross_entropy"
        )
    stop = config.train.early_stop
    if stop is not None and stop.metric not in EVAL_COLUMNS + task.eval_columns:
        raise ConfigError(
            f"config: train.early_stop.metric '{stop.metric}' is not one of "
            f"{', '.join(EVAL_COLUMNS + task.eval_columns)}"
        )
    resolved = config.model_copy(
        update={
            "data_seed": data_seed,
            "model_seed": model_seed,
            "task": TaskConfig(name=config.task.name, **params.model_dump(mode="json")),
            "model": ModelConfig(**resolved_params(model)),
        }
    )
    return Prepared(resolved, task, model, resolve_device(device or config.train.device))


def default_out(config: RunConfig) -> Path:
    return Path("runs") / f"{config.name}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    device: str | None = None,
    progress: Progress | None = None,
    report: bool = True,
    threads: int | None = None,
    report_to: str | Sequence[str] | ReportTo = (),
) -> Run:
    """Train `config` into a new run directory (default runs/NAME-sSEED-TIME) and return the run;
    with `report`, end by writing RUN_DIR/report.html. `threads`: torch's CPU threads (default: the
    CPUs this process may use, `groklab.runtime.cpu_threads`). `report_to`: experiment trackers that
    mirror the run as it trains ("tensorboard", "wandb", "mlflow": `groklab.store.trackers`)."""
    prepared = resolve(config, device)
    check_threads(threads)
    report_to = ReportTo.of(report_to)  # a tracker that is not there fails here, before the run directory
    path = Path(out) if out else default_out(config)
    existed = path.exists()
    run_dir = RunDir.create(path, to_yaml(prepared.config))
    try:
        return _train(run_dir, prepared, None, progress, threads, report, report_to)
    except TrackerError:  # a tracker that could not start: nothing trained, no half-made run left
        run_dir.discard(keep_dir=existed)
        raise


def resume(
    path: str | Path,
    *,
    device: str | None = None,
    progress: Progress | None = None,
    report: bool = True,
    threads: int | None = None,
    report_to: str | Sequence[str] | ReportTo = (),
) -> Run:
    """Continue an interrupted or killed run from its last checkpoint; a finished run is left as is.
    The finished metrics equal those of an uninterrupted run. `report_to`: trackers, each continuing
    the tracker run it mirrored to before where it can (`groklab.store.trackers`); a finished run is
    mirrored to them whole, its rows, report and metrics table (a run trained without a tracker, sent to
    one afterwards)."""
    report_to = ReportTo.of(report_to)
    existing = Run(path)
    if existing.summary.get("status") in DONE:
        if report_to:
            with existing.dir.lock():
                mirror = Mirror(report_to, existing.path, sink=None)
                mirror.start(existing.config.model_dump(mode="json"), existing.dir.metric_rows())
                mirror.finish(existing.summary["status"])
        return existing
    if existing.summary.get("status") == "imported":
        raise RunDirError(f"{existing.path} was imported (`groklab import`); it has no training state to resume from")
    if existing.summary.get("batch") and not existing.dir.has_state():
        raise RunDirError(
            f"{existing.path} is a member of the batched sweep's batch {existing.summary['batch']}; "
            "resume it with the same `groklab sweep` command"
        )
    prepared = resolve(existing.config, device)
    check_threads(threads)
    state = existing.dir.load_state() if existing.dir.has_state() else None
    return _train(existing.dir, prepared, state, progress, threads, report, report_to)


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")


def _finish(run: Run, report: bool) -> Run:
    if report:
        from groklab.report import write_report  # plotly loads only when a report is written

        write_report([run.path])
    return run


class Recorder:
    """The trainer's sink: appends metric rows, saves checkpoints, keeps summary.json current. A member of a
    batch (`batch` names it) saves its weights only and hands its resume state to `states` (the batch's)."""

    def __init__(
        self,
        run_dir: RunDir,
        prepared: Prepared,
        rows: list[dict],
        batch: str | None = None,
        states: dict[str, TrainState] | None = None,
    ):
        self.run_dir, self.prepared, self.rows, self.batch, self.states = run_dir, prepared, rows, batch, states

    def on_eval(self, row: dict) -> None:
        self.rows.append(row)
        self.run_dir.append_metrics(row)

    def on_checkpoint(self, state: TrainState) -> None:
        if self.batch is None:
            self.run_dir.save_checkpoint(state)
        else:
            self.run_dir.save_weights(state)
            self.states[member_name(self.run_dir.path)] = state
        self.write_summary("running", state.step)

    def write_summary(self, status: str, step: int) -> None:
        extra = {} if self.batch is None else {"batch": self.batch}
        write_summary(
            self.run_dir,
            self.prepared.config,
            self.rows,
            status=status,
            step=step,
            device=str(self.prepared.device),
            cpu=runtime.cpu_name(),
            threads=torch.get_num_threads(),
            pid=os.getpid(),
            host=os.uname().nodename,
            **extra,
        )


def write_summary(run_dir: RunDir, cfg: RunConfig, rows: list[dict], **fields) -> None:
    """summary.json: the run's status and headline figures, Nanda et al.'s three phases found in its metrics
    (not for structural-grokking LMs, whose token-level train / test accuracy they do not describe), and the
    stages every run has (`dynamics.detect_stages`: memorized, structure and LLC onsets, generalized, cleanup)."""
    metrics = pd.DataFrame(rows)
    phases = {} if is_structural(metrics) else detect_phases(metrics)
    run_dir.write_summary(
        {
            **fields,
            "name": cfg.name,
            "source": cfg.source,
            "expected": cfg.expected,
            **summarize(metrics),
            **phases,
            **phase_evidence(metrics, phases),
            **detect_stages(metrics),
        }
    )


def _trainer(prepared: Prepared, state: TrainState | None) -> Trainer:
    cfg = prepared.config
    model = build_model(prepared.model, cfg.resolved_model_seed).to(prepared.device)
    task = prepared.task.to(prepared.device)
    probes = () if cfg.measures is None else (Probe(cfg.measures.every, make_measures(cfg.measures, task)),)
    trainer = Trainer(task, model, cfg.train, seed=cfg.resolved_model_seed, probes=probes)
    if state is not None:
        trainer.load_state(state)
    return trainer


def _train(
    run_dir: RunDir,
    prepared: Prepared,
    state: TrainState | None,
    progress: Progress | None,
    threads: int | None = None,
    report: bool = False,
    report_to: ReportTo | None = None,
) -> Run:
    """Train from `state` (None: from the start), then the final measures and the report. The recorder is
    the trainer's sink; with trackers, a `Mirror` around it, started before training and finished last."""
    runtime.set_threads(threads)
    mirror = None
    try:
        with run_dir.lock():
            run_dir.truncate_metrics(state.step if state else -1)
            trainer = _trainer(prepared, state)
            recorder = Recorder(run_dir, prepared, run_dir.metric_rows())
            if state is not None:  # a resumed run says so now, not at its next checkpoint (a dead pid: 'killed')
                recorder.write_summary("running", state.step)
            if report_to:
                mirror = Mirror(report_to, run_dir.path, recorder)
                mirror.start(prepared.config.model_dump(mode="json"), recorder.rows)
            with graceful_stop() as should_stop:
                outcome: Outcome = trainer.run(mirror or recorder, should_stop, progress)
            recorder.write_summary(outcome.status, outcome.step)
        run = _finish(_final_measures(Run(run_dir.path), prepared, outcome), report)
    except BaseException as err:
        if mirror is not None:
            mirror.finish("killed" if isinstance(err, KeyboardInterrupt) else "failed")
        raise
    if mirror is not None:
        mirror.finish(outcome.status)
    return run


def _final_measures(run: Run, prepared: Prepared, outcome: Outcome) -> Run:
    cfg = prepared.config
    if (
        cfg.measures is not None
        and "fourier" in cfg.measures.names
        and cfg.measures.key_freqs == "final"
        and outcome.status in ("finished", "stopped_early")
    ):
        # the paper's choice: the final model's frequencies (the Fourier measures at checkpoints only are
        # recomputed; the other measure sets' columns stay as measured while training)
        measure(run.path, "final", device=str(prepared.device), names=("fourier",))
    return run


def member_name(path: Path) -> str:
    """A batch member's name in the batch state: its run directory's last two path parts."""
    return f"{path.parent.name}/{path.name}"


def batch_key(config: RunConfig) -> str:
    """What members of one batch must share (everything but seeds and the shape-free hyper-parameters
    `groklab.training.population` lets differ): configs with equal keys can be batched together."""
    data = config.model_dump(mode="json")
    for key in ("name", "source", "expected", "outcome", "seed", "data_seed", "model_seed"):
        data.pop(key, None)
    for key in MEMBER_HPARAMS:
        data["train"].pop(key, None)
    data["model"].pop("init_scale", None)
    return json.dumps(data, sort_keys=True)


def run_batch(
    configs: Sequence[RunConfig],
    paths: Sequence[str | Path],
    state_path: str | Path,
    *,
    name: str = "batch",
    device: str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    report_to: str | Sequence[str] | ReportTo = (),
) -> list[Run]:
    """Train several runs together as one population (`groklab.training.population`), each into its
    own ordinary run directory, and return them. Their configs must agree but for seeds and the
    hyper-parameters members may differ in (`batch_key`). The batch's resume state — every member's,
    at one step — is one file, `state_path`, written atomically at each checkpoint: calling this again
    with the same members resumes them all from it (finished members are skipped); the finished metrics
    equal those of an uninterrupted batch. `report_to`: trackers, one tracker run per member."""
    prepared = [resolve(config, device) for config in configs]
    if len({batch_key(p.config) for p in prepared}) > 1:
        raise ConfigError(
            "runs of one batch must share everything but seeds, train.lr, weight_decay, betas, eps, "
            "momentum and model.init_scale; batch them separately"
        )
    check_threads(threads)
    report_to = ReportTo.of(report_to)
    runtime.set_threads(threads)
    state_path = Path(state_path)
    dirs = [RunDir.open(Path(p)) if (Path(p) / "config.yaml").is_file() else None for p in paths]
    dirs = [d or RunDir.create(Path(p), to_yaml(prep.config)) for d, p, prep in zip(dirs, paths, prepared)]
    saved = load_states(state_path) if state_path.is_file() else {}
    names = [member_name(d.path) for d in dirs]
    mirrors: dict[int, Mirror] = {}
    try:
        outcomes = _train_batch(dirs, prepared, names, saved, state_path, name, progress, report_to, mirrors)
        for i, outcome in sorted(outcomes.items()):
            _final_measures(Run(dirs[i].path), prepared[i], outcome)
    except BaseException as err:
        for mirror in mirrors.values():
            mirror.finish("killed" if isinstance(err, KeyboardInterrupt) else "failed")
        raise
    for i, mirror in mirrors.items():
        mirror.finish(outcomes[i].status)
    return [Run(d.path) for d in dirs]


def _train_batch(dirs, prepared, names, saved, state_path, name, progress, report_to, mirrors) -> dict[int, Outcome]:
    """`run_batch`'s training, under its members' locks: the outcome of each member that ended, by index;
    the members' trackers' mirrors into `mirrors`."""
    with contextlib.ExitStack() as locks:
        for d in dirs:
            locks.enter_context(d.lock())
        todo = [i for i, d in enumerate(dirs) if Run(d.path).summary.get("status") not in DONE]
        if not todo:
            return {}
        states = {n: saved[n] for n in names if n in saved}
        outcomes: dict[int, Outcome] = {}
        for i in todo:  # ended (early stop, divergence) in the saved state, but killed before its summary
            ended = saved.get(names[i])
            if ended is not None and ended.ended is not None:
                dirs[i].truncate_metrics(ended.step)
                Recorder(dirs[i], prepared[i], dirs[i].metric_rows(), batch=name).write_summary(ended.ended, ended.step)
                outcomes[i] = Outcome(ended.ended, ended.step, ended.elapsed_s)
        todo = [i for i in todo if i not in outcomes]
        start = [saved.get(names[i]) for i in todo]
        if len({s.step if s else -1 for s in start}) > 1:  # not one batch's state: start the unfinished over
            start = [None] * len(todo)
            states = {n: s for n, s in states.items() if s.ended is not None}
        if todo:
            trainers, recorders = [], []
            for i, state in zip(todo, start):
                dirs[i].truncate_metrics(state.step if state else -1)
                trainers.append(_trainer(prepared[i], state))
                recorders.append(Recorder(dirs[i], prepared[i], dirs[i].metric_rows(), batch=name, states=states))
                if state is not None:  # running again now, as a single run resumed
                    recorders[-1].write_summary("running", state.step)
                if report_to:
                    mirrors[i] = Mirror(report_to, dirs[i].path, recorders[-1])
                    mirrors[i].start(prepared[i].config.model_dump(mode="json"), recorders[-1].rows)
            rng = start[0].rng if start[0] is not None else None
            with graceful_stop() as should_stop:
                ends = Population(trainers).run(
                    [mirrors.get(i, recorder) for i, recorder in zip(todo, recorders)],
                    should_stop,
                    progress,
                    seed=trainers[0].seed,
                    rng=rng,
                    on_checkpoints=lambda: save_states(state_path, states),
                )
            for i, recorder, outcome in zip(todo, recorders, ends):
                recorder.write_summary(outcome.status, outcome.step)
                outcomes[i] = outcome
    return outcomes


def measure(
    path: str | Path,
    key_freqs: str | list[int] | None = None,
    *,
    device: str | None = None,
    names: tuple[str, ...] | None = None,
    every: int | None = None,
    overrides: Sequence[str] = (),
) -> Run:
    """Recompute the measure columns of a run's metrics from its saved checkpoints, leaving the
    training columns as they are; `names`: only these measure sets (e.g. ("llc",)), the other measure
    columns kept (and, in a pass over every checkpoint, these sets' columns removed from the rows between
    checkpoints, which cannot be recomputed). `key_freqs`: "final" (found in the last checkpoint), "each" (found in each checkpoint)
    or a list; default: the run's config. `every`: only the checkpoints at multiples of this many steps
    (an expensive measure such as the LLC on a subset; the other rows are left as they are). `overrides`:
    measures.KEY=VALUE settings for this pass (e.g. measures.llc_epsilon=1e-3), not stored in the run's config."""
    if every is not None and every < 1:
        raise ConfigError(f"--every takes a positive number of steps, got {every}")
    if any(not item.startswith("measures.") for item in overrides):
        raise ConfigError(f"--set: measure takes only measures.KEY=VALUE settings, got {', '.join(overrides)}")
    run = Run(path)
    imported = run.summary.get("imported")
    if imported:  # no groklab model or task to measure; the importer computed what the checkpoints give
        raise RunDirError(
            f"{run.path} was imported from {imported.get('series')} and keeps no weights: its weight statistics "
            f"were computed on import; import it again to change them (`groklab import {imported.get('format')} "
            "--help`: --eval-text adds a held-out loss)"
        )
    config = (
        config_from_dict(apply_overrides(run.config.model_dump(mode="json"), overrides)) if overrides else run.config
    )
    cfg = config.measures or MeasuresConfig()
    if names:
        cfg = cfg.model_copy(update={"names": tuple(names)})
    key_freqs = key_freqs if key_freqs is not None else cfg.key_freqs
    task = run.task
    check_measures(cfg, task)
    target = resolve_device(device or "cpu")
    load = lambda step: run.model(step).to(target)  # noqa: E731
    with run.dir.lock():
        rows, steps = run.dir.metric_rows(), set(run.steps)
        if not rows or not steps:
            raise RunDirError(f"{run.path} has no metrics or checkpoints to measure yet")
        freqs = None
        if key_freqs == "final":
            freqs = final_key_frequencies(cfg, load(max(steps)), task.to(target)) if "fourier" in cfg.names else None
        elif key_freqs != "each":
            freqs = list(key_freqs)
        compute = make_measures(cfg, task.to(target), freqs)
        produced, between = set(), []
        for row in rows:
            measured = row["step"] in steps and (every is None or row["step"] % every == 0)
            if not names and (measured or every is None):  # all recomputed; with `names`, only those sets' columns
                for column in [c for c in row if c not in BASE_COLUMNS and c not in task.eval_columns]:
                    del row[column]
            if measured:
                values = compute(load(row["step"]))
                produced.update(values)
                row.update(values)
            else:
                between.append(row)
        if names and every is None:
            for row in between:
                for column in produced:
                    row.pop(column, None)
        run.dir.write_metrics(rows)
        summary = run.summary
        kept = ("status", "step", "device", "cpu", "threads", "pid", "host", "batch")  # what training recorded
        write_summary(run.dir, run.config, rows, **{k: summary[k] for k in kept if k in summary})
    return run


@contextlib.contextmanager
def graceful_stop() -> Iterator[Callable[[], bool]]:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked = []

    def handler(signum, frame):
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(asked)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

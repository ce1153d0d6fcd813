"""One run, end to end: validate, create the run directory, train, record, summarize, resume.

`groklab run X` is `groklab.run(groklab.load_preset("X"))`. Everything a user can get wrong is
checked before the run directory is created, so a bad config never leaves a half-made run and
never touches an existing one.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import pandas as pd
import torch

from groklab.config import MeasuresConfig, ModelConfig, RunConfig, TaskConfig, to_yaml
from groklab.dynamics import detect_phases, phase_evidence, summarize
from groklab.dynamics.summary import is_structural
from groklab.errors import ConfigError, RunDirError
from groklab.measures import check_measures, final_key_frequencies, make_measures
from pydantic import BaseModel

from groklab.models import build_model, model_config, resolved_params
from groklab.store import Run, RunDir
from groklab.tasks import Task, build_task, task_params
from groklab.training import Outcome, Probe, Trainer, TrainState

EVAL_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")
BASE_COLUMNS = ("step", *EVAL_COLUMNS, "elapsed_s")  # everything else in a metrics row is a measure
Progress = Callable[[int, Optional[dict]], None]


@dataclass(frozen=True)
class Prepared:
    config: RunConfig  # resolved: seeds, task and model parameters with every default filled in
    task: Task
    model: BaseModel  # the model's validated config
    device: torch.device


def resolve_device(spec: str) -> torch.device:
    """auto (CUDA when available, else CPU) | cpu | cuda | cuda:N."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' requested but CUDA is not available here; use --device cpu "
                              "(or install a CUDA build of torch, see README)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return device


def resolve(config: RunConfig, device: Optional[str] = None) -> Prepared:
    """Validate everything and fill in every default; raises ConfigError with a one-line message."""
    data_seed, model_seed = config.resolved_data_seed, config.resolved_model_seed
    params = task_params(config.task)
    task = build_task(config.task, data_seed)
    model = model_config(config.model, task)
    if config.measures is not None:
        check_measures(config.measures, task)
    stop = config.train.early_stop
    if stop is not None and stop.metric not in EVAL_COLUMNS + task.eval_columns:
        raise ConfigError(f"config: train.early_stop.metric '{stop.metric}' is not one of "
                          f"{', '.join(EVAL_COLUMNS + task.eval_columns)}")
    resolved = config.model_copy(update={
        "data_seed": data_seed, "model_seed": model_seed,
        "task": TaskConfig(name=config.task.name, **params.model_dump(mode="json")),
        "model": ModelConfig(**resolved_params(model)),
    })
    return Prepared(resolved, task, model, resolve_device(device or config.train.device))


def default_out(config: RunConfig) -> Path:
    return Path("runs") / f"{config.name}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(config: RunConfig, out: Union[str, Path, None] = None, *, device: Optional[str] = None,
        progress: Optional[Progress] = None, report: bool = True) -> Run:
    """Train `config` into a new run directory (default runs/NAME-sSEED-TIME) and return the run;
    with `report`, end by writing RUN_DIR/report.html."""
    prepared = resolve(config, device)
    run_dir = RunDir.create(Path(out) if out else default_out(config), to_yaml(prepared.config))
    return _finish(_train(run_dir, prepared, None, progress), report)


def resume(path: Union[str, Path], *, device: Optional[str] = None, progress: Optional[Progress] = None,
           report: bool = True) -> Run:
    """Continue an interrupted or killed run from its last checkpoint; a finished run is left as is.
    The finished metrics equal those of an uninterrupted run."""
    existing = Run(path)
    if existing.summary.get("status") in ("finished", "stopped_early", "diverged"):
        return existing
    prepared = resolve(existing.config, device)
    state = existing.dir.load_state() if existing.dir.has_state() else None
    return _finish(_train(existing.dir, prepared, state, progress), report)


def _finish(run: Run, report: bool) -> Run:
    if report:
        from groklab.report import write_report  # plotly loads only when a report is written

        write_report([run.path])
    return run


class Recorder:
    """The trainer's sink: appends metric rows, saves checkpoints, keeps summary.json current."""

    def __init__(self, run_dir: RunDir, prepared: Prepared, rows: list[dict]):
        self.run_dir, self.prepared, self.rows = run_dir, prepared, rows

    def on_eval(self, row: dict) -> None:
        self.rows.append(row)
        self.run_dir.append_metrics(row)

    def on_checkpoint(self, state: TrainState) -> None:
        self.run_dir.save_checkpoint(state)
        self.write_summary("running", state.step)

    def write_summary(self, status: str, step: int) -> None:
        write_summary(self.run_dir, self.prepared.config, self.rows, status=status, step=step,
                      device=str(self.prepared.device), pid=os.getpid(), host=os.uname().nodename)


def write_summary(run_dir: RunDir, cfg: RunConfig, rows: list[dict], **fields) -> None:
    """summary.json: the run's status and headline figures, and the phases found in its metrics (not for
    structural-grokking LMs, whose token-level train / test accuracy the phases do not describe)."""
    metrics = pd.DataFrame(rows)
    phases = {} if is_structural(metrics) else detect_phases(metrics)
    run_dir.write_summary({**fields, "name": cfg.name, "source": cfg.source, "expected": cfg.expected,
                           **summarize(metrics), **phases, **phase_evidence(metrics, phases)})


def _train(run_dir: RunDir, prepared: Prepared, state: Optional[TrainState], progress: Optional[Progress]) -> Run:
    cfg = prepared.config
    with run_dir.lock():
        run_dir.truncate_metrics(state.step if state else -1)
        model = build_model(prepared.model, cfg.resolved_model_seed).to(prepared.device)
        task = prepared.task.to(prepared.device)
        probes = () if cfg.measures is None else (Probe(cfg.measures.every, make_measures(cfg.measures, task)),)
        trainer = Trainer(task, model, cfg.train, seed=cfg.resolved_model_seed, probes=probes)
        if state is not None:
            trainer.load_state(state)
        recorder = Recorder(run_dir, prepared, run_dir.metric_rows())
        with graceful_stop() as should_stop:
            outcome: Outcome = trainer.run(recorder, should_stop, progress)
        recorder.write_summary(outcome.status, outcome.step)
    run = Run(run_dir.path)
    if (cfg.measures is not None and "fourier" in cfg.measures.names and cfg.measures.key_freqs == "final"
            and outcome.status in ("finished", "stopped_early")):
        # the paper's choice: the final model's frequencies (the measures at checkpoints only are recomputed)
        measure(run.path, "final", device=str(prepared.device))
    return run


def measure(path: Union[str, Path], key_freqs: Union[str, list[int], None] = None, *,
            device: Optional[str] = None, names: Optional[tuple[str, ...]] = None) -> Run:
    """Recompute the measure columns of a run's metrics from its saved checkpoints, leaving the
    training columns as they are. `key_freqs`: "final" (found in the last checkpoint), "each"
    (found in each checkpoint) or a list; default: the run's config."""
    run = Run(path)
    cfg = run.config.measures or MeasuresConfig()
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
        for row in rows:
            for column in [c for c in row if c not in BASE_COLUMNS and c not in task.eval_columns]:
                del row[column]
            if row["step"] in steps:
                row.update(compute(load(row["step"])))
        run.dir.write_metrics(rows)
        summary = run.summary
        write_summary(run.dir, run.config, rows, **{k: summary[k] for k in ("status", "step", "device", "pid", "host")
                                                    if k in summary})
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

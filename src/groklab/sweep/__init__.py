"""Sweeps: one config over many seeds (and a grid of values of any config field, e.g. depths), one
run per seed and point, run as units of work (a run, or a batch of runs trained together) by an engine:
local worker processes, a Ray cluster or SLURM (`groklab.sweep.engines`; each unit is
`groklab.sweep.worker.run_unit`, the same on every engine).

A unit that fails (an error, a crash, a killed process, a diverged run) is recorded as such and does not
stop the others. Running the same command again skips finished runs and resumes the others from their
last checkpoint: the sweep directory is the whole state, on every engine.

A config that fixes `data_seed` or `model_seed` keeps them fixed across the sweep; `seed` varies.
Runs are deterministic given the config, the seed and the number of threads per worker.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import yaml

from groklab import runtime
from groklab.config import RunConfig, apply_overrides, config_from_dict
from groklab.dynamics import censored_median, convergence_threshold, convergence_times
from groklab.dynamics.compare import PeakOf, bootstrap_mean, bootstrap_peak, rank_correlation
from groklab.dynamics.phases import HEADLINE_GEN, learnt_in_distribution
from groklab.dynamics.summary import STRUCTURAL_MEASURES
from groklab.errors import ConfigError
from groklab.experiment import DONE, batch_key, check_threads, resolve, resolve_device
from groklab.models import build_model
from groklab.store import Run, SweepDir
from groklab.store.sweep_dir import point_label
from groklab.store.trackers import ReportTo
from groklab.sweep.engines import ENGINES, EngineOptions, make_engine
from groklab.sweep.worker import BUSY, INTERRUPTED, Job
from groklab.training import batchable


def parse_seeds(text: str) -> list[int]:
    """'0-39' or '0,3,5-7' -> the seeds, sorted, without repeats."""
    seeds: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ConfigError(f"--seeds takes ranges and lists like 0-39 or 0,3,5-7; got '{text}'")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """['model.n_layers=2,4,6', ...] -> {"model.n_layers": [2, 4, 6]} (values parsed as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid takes KEY.PATH=V1,V2,...; got '{item}'")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


Key = tuple[tuple, int]  # (the point's (key, value) pairs, seed)
# examples of all members' training batches together in one batched step: more only adds memory traffic
# (measured: nanda-mod-add, full batches of 3830, is 1.1x the 2-worker pool in batches of 8 but 0.7x in 40)
MAX_BATCH_ROWS = 32_768


def _key(point: dict, seed: int) -> Key:
    return tuple(point.items()), seed


def point_config(config: RunConfig, point: dict, seed: int) -> RunConfig:
    data = apply_overrides(config.model_dump(mode="json"), [f"{k}={json.dumps(v)}" for k, v in point.items()])
    return config_from_dict({**data, "seed": seed})


def sweep(
    config: RunConfig,
    seeds: Sequence[int],
    out: str | Path | None = None,
    *,
    workers: int | None = None,
    grid: dict[str, list] | None = None,
    threads: int | None = None,
    device: str | None = None,
    threshold: float = 0.9,
    batch: int = 1,
    on: str = "local",
    engine: EngineOptions | None = None,
    report_to: str | Sequence[str] = (),
    progress: Callable[[str], None] = lambda line: None,
    watch: Callable[[SweepDir], None] = lambda sweep_dir: None,
) -> SweepDir:
    """Train `config` once per seed (and per point of `grid`, e.g. {"model.n_layers": [2, 4, 6]}) into
    SWEEP_DIR/runs/... (default sweeps/NAME), then write the sweep table. With `batch` > 1, up to `batch` runs
    that share their shapes train together as one population (`groklab.training.population`); grid points
    that change shapes go into separate batches. `on` the engine that runs the units (`groklab.sweep.engines`:
    local processes, `workers` at a time with `threads` each (default: `local_slots`); a Ray cluster; SLURM),
    reached with `engine`'s options. Resumes a sweep of the same config in the same directory. `report_to`:
    trackers every run mirrors to, grouped by the sweep (`groklab.store.trackers`). `progress`
    gets a line per event, `watch` the sweep directory about once a second while it runs."""
    for flag, value in (("--workers", workers), ("--batch", batch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    check_threads(threads)
    if on not in ENGINES:
        raise ConfigError(f"--on takes one of {', '.join(ENGINES)}; got '{on}'")
    names = ReportTo.of(report_to).names  # a tracker that is not there fails before the sweep directory
    if on != "local" and device is not None:  # the runs' machines have the GPUs, maybe not this one
        resolve_device(device, here=False)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    prepared = {}
    for point in points:  # everything checked before any run starts
        prepared[_key(point, seeds[0])[0]] = resolve(
            point_config(config, point, seeds[0]), device if on == "local" else "cpu"
        )
    out = Path(out) if out else Path("sweeps") / config.name
    if on != "local" and threads is None:
        raise ConfigError(f"--on {on}: say how many CPU threads each run (or batch) takes, e.g. --threads 4")
    # an engine that is not there fails before the sweep is made; the local one waits for the units' count
    executor = None if on == "local" else make_engine(on, str(out.resolve()), engine or EngineOptions())
    try:
        sweep_dir = SweepDir.create_or_open(out, config.model_dump(mode="json"), list(seeds), threshold, grid)
        ReportTo(names, sweep_dir.path.name, sweep_dir.path).prepare(config.model_dump(mode="json"))
        keys = [_key(point, seed) for point in points for seed in seeds]
        units, capped = _units(config, keys, batch, prepared)
        largest = max(map(len, units))
        units = [unit for unit in units if any(_status(sweep_dir, *key) not in DONE for key in unit)]
        done = sum(_status(sweep_dir, *key) in DONE for key in keys)
        if on == "local":
            device_type = next(iter(prepared.values())).device.type
            workers, threads = local_slots(workers, threads, len(units), device_type)
            executor = make_engine(
                on, str(sweep_dir.path.resolve()), replace(engine or EngineOptions(), workers=workers)
            )
        progress(
            f"sweep {sweep_dir.path}: {done} of {len(keys)} runs already done; {len(keys) - done} to run"
            + (
                f" in {len(units)} batch(es) of up to {largest}"
                + (f" (at most {MAX_BATCH_ROWS} examples a step)" if capped else "")
                if batch > 1
                else ""
            )
            + (f", {workers} process(es) at a time" if on == "local" else f", on {on}")
            + f" ({threads} thread(s) each)"
        )
        _drive(executor, sweep_dir, units, threads, device, progress, watch, names)
    finally:
        if executor is not None:
            executor.close()
    return sweep_dir


def local_slots(workers: int | None, threads: int | None, units: int, device_type: str) -> tuple[int, int]:
    """How many worker processes at once, and CPU threads each, for `units` units of work on this machine.
    Left unset on a CPU: a process per `threads` CPUs (default one thread each), no more than the units — one
    run per core trains more runs an hour than one run on every core for every preset measured (groklab's
    small models gain little from a second thread; docs/results/speed.md); a single unit gets every core.
    On a GPU one process, which the device serves. Threads left unset: the CPUs shared out over the workers."""
    cpus = runtime.cpu_threads()
    if workers is None:
        workers = 1 if device_type == "cuda" else max(1, min(units, cpus // (threads or 1)))
    return workers, threads or max(1, cpus // workers)


def _drive(
    executor,
    sweep_dir: SweepDir,
    units: list[tuple[Key, ...]],
    threads: int,
    device: str | None,
    progress: Callable[[str], None],
    watch: Callable[[SweepDir], None],
    report_to: tuple[str, ...] = (),
) -> dict[Key, str]:
    """Run the units on the engine, `executor.slots` at a time; record what failed; Ctrl-C asks the running
    units to checkpoint and stop, then re-raises. Writes the sweep table however it ends."""
    pending, running, failed = list(units), {}, {}
    seen = 0.0
    previous = _signals_interrupt()  # `kill`, a scheduler's stop: the same as Ctrl-C, not orphaned units
    try:
        while pending or running:
            room = len(pending) if executor.slots is None else executor.slots - len(running)
            if room > 0:
                batch, pending = pending[:room], pending[room:]
                for unit, handle in zip(
                    batch, executor.submit([_job(sweep_dir, unit, threads, device, report_to) for unit in batch])
                ):
                    running[handle] = unit
            for handle, ended in executor.wait(list(running), timeout=0.5).items():
                unit = running.pop(handle)
                for key in unit:
                    status = _status(sweep_dir, *key)
                    if ended.code == BUSY:
                        failed[key] = (
                            f"being trained by another process (an earlier sweep's?); see {_log_path(sweep_dir, unit)}"
                        )
                    elif ended.code != INTERRUPTED and (ended.code != 0 or status not in DONE):
                        failed[key] = (ended.error or f"exit code {ended.code}") + f"; see {_log_path(sweep_dir, unit)}"
                    progress(f"{_label(key)}: {status}" + (f" ({failed[key]})" if key in failed else ""))
            if time.monotonic() - seen >= 1.0:
                watch(sweep_dir)
                seen = time.monotonic()
    except KeyboardInterrupt:
        progress("interrupted: the running units checkpoint and stop; run the same command again to continue")
        executor.cancel(list(running))  # the runs checkpoint and stop; the next `groklab sweep` resumes them
        raise
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)
        sweep_dir.write_table(sweep_table(sweep_dir, sweep_dir.threshold, failed))
        watch(sweep_dir)
    return failed


def _signals_interrupt() -> dict[int, object]:
    """SIGTERM and SIGINT to the sweep's driver raise KeyboardInterrupt, so its running units are asked to
    checkpoint and stop (the driver dying alone would leave them training, holding their runs' locks). SIGINT
    too, because a shell starts a background job (`groklab sweep ... &`) with SIGINT ignored, and Python then
    never raises KeyboardInterrupt: `kill -INT` to the job's group stopped its workers (they handle SIGINT
    themselves) while the driver went on starting the next units. The previous handlers, to restore (none off
    the main thread, where signals cannot be handled)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}


def _job(
    sweep_dir: SweepDir, unit: tuple[Key, ...], threads: int, device: str | None, report_to: tuple[str, ...] = ()
) -> Job:
    members = tuple((dict(point), seed) for point, seed in unit)
    label = _label(unit[0]) if len(unit) == 1 else f"{batch_name(unit)} ({len(unit)} runs)"
    return Job(
        str(sweep_dir.path.resolve()),
        members,
        threads,
        device,
        str(_log_path(sweep_dir, unit).resolve()),
        label,
        tuple(report_to),
    )


def _units(config: RunConfig, keys: list[Key], batch: int, prepared: dict) -> tuple[list[tuple[Key, ...]], bool]:
    """The units of work, and whether MAX_BATCH_ROWS made some batches smaller than asked. Single runs go
    seed by seed (seed 0 at every grid point, then seed 1, ...: a sweep stopped early, or watched while it
    runs, has every point with as many seeds as the others, so `groklab report`'s intervals cover the whole
    grid); batches of up to `batch` runs, whose configs share everything but seeds and the hyper-parameters
    members may differ in (`batch_key`), in the order of `keys` (their members name their resume state)."""
    if batch == 1:  # seed by seed across the grid: every point gets its first seeds before any its last
        return [(key,) for key in sorted(keys, key=lambda key: key[1])], False
    groups: dict[str, list[Key]] = {}
    sizes: dict[str, int] = {}
    for key in keys:
        prep = prepared[key[0]]
        solo = not batchable(build_model(prep.model, 0))
        group = f"solo:{key}" if solo else batch_key(point_config(config, dict(key[0]), key[1]))
        groups.setdefault(group, []).append(key)
        rows = prep.config.train.batch_size
        rows = len(prep.task.train) if rows == "full" else min(rows, len(prep.task.train))
        sizes[group] = 1 if solo else max(1, min(batch, MAX_BATCH_ROWS // rows))
    units = [
        tuple(group[i : i + sizes[name]]) for name, group in groups.items() for i in range(0, len(group), sizes[name])
    ]
    capped = any(
        sizes[name] < min(batch, len(group)) and not name.startswith("solo:") for name, group in groups.items()
    )
    return units, capped


def batch_name(unit: tuple[Key, ...]) -> str:
    """A batch's name, from its members: the same members give the same name (and resume state)."""
    return "batch-" + hashlib.sha1(json.dumps([[list(map(list, p)), s] for p, s in unit]).encode()).hexdigest()[:10]


def _label(key: Key) -> str:
    point, seed = key
    return ", ".join(filter(None, [point_label(point), f"seed {seed}"]))


def _log_path(sweep_dir: SweepDir, unit: tuple[Key, ...]) -> Path:
    if len(unit) == 1:
        return sweep_dir.log_path(unit[0][1], dict(unit[0][0]))
    return sweep_dir.path / "logs" / f"{batch_name(unit)}.log"


def _status(sweep_dir: SweepDir, point, seed: int) -> str:
    path = sweep_dir.run_path(seed, dict(point))
    if not (path / "config.yaml").is_file():
        return "not started"
    return Run(path).status


def sweep_runs(sweep_dir: SweepDir, point: dict | None = None) -> dict[int, Run]:
    """The runs of a sweep (of one point of its grid) that have started, by seed."""
    return {
        seed: Run(sweep_dir.run_path(seed, point))
        for seed in sweep_dir.seeds
        if (sweep_dir.run_path(seed, point) / "config.yaml").is_file()
    }


def sweep_table(
    sweep_dir: SweepDir, threshold: float | None = None, failed: dict[Key, str] | None = None
) -> pd.DataFrame:
    """One row per run (point of the grid and seed): status, converged (the sweep's metric, test acc, >=
    threshold, default the sweep's; an imported sweep's metric, e.g. a loss, <= it), the convergence step (censored runs are marked, not imputed), the first steps with
    train / test acc >= 99%, final values (and final / best values of held-out task metrics), wall time,
    and the error of a failed run (`failed`, else the one the stored table recorded while the run is
    still not done)."""
    threshold = sweep_dir.threshold if threshold is None else threshold
    metric = sweep_dir.metric  # test_acc, or what an imported sweep recorded (None: no convergence)
    points = sweep_dir.points
    if failed is None:
        old = sweep_dir.read_table()
        failed = {}
        if old is not None and "error" in old:
            for _, row in old.iterrows():
                if isinstance(row["error"], str) and row["error"]:
                    point = {k: _same_type(row[k], v) for k, v in points[0].items()} if points[0] else {}
                    failed[_key(point, int(row["seed"]))] = row["error"]
    rows = []
    for point in points:
        runs = sweep_runs(sweep_dir, point)
        metrics = {seed: run.metrics for seed, run in runs.items() if not run.metrics.empty}
        scored = {seed: m for seed, m in metrics.items() if metric is not None and metric in m}
        if threshold is None and scored:  # an imported sweep: derived from its runs
            threshold = convergence_threshold(scored, metric)
        conv = convergence_times(scored, metric, threshold).set_index("seed") if scored else None
        for seed in sweep_dir.seeds:
            key = _key(point, seed)
            row = {**point, "seed": seed, "status": _status(sweep_dir, point, seed)}
            if seed in metrics:
                s = runs[seed].summary
                if seed in scored:
                    c = conv.loc[seed]
                    row.update(
                        converged=bool(c["converged"]), convergence_step=int(c["step"]), censored=bool(c["censored"])
                    )
                row.update(
                    step_train_acc_99=s.get("step_train_acc_99"),
                    step_test_acc_99=s.get("step_test_acc_99"),
                    **{
                        f"final_{k}": s.get(f"final_{k}")
                        for k in ("train_acc", "test_acc", "train_loss", "test_loss", "text_loss")
                        if k != "text_loss" or f"final_{k}" in s
                    },
                    **{
                        k: v
                        for k, v in s.items()
                        if k.startswith(("final_id_", "final_gen_", "max_id_", "max_gen_"))
                        or k[len("final_") :] in STRUCTURAL_MEASURES
                    },
                    last_step=s.get("last_step"),
                    elapsed_s=s.get("elapsed_s"),
                )
            row["error"] = failed.get(key, "") if row["status"] not in DONE or key in failed else ""
            rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["threshold"] = threshold
    table.attrs["metric"] = metric
    return table


def progress_table(sweep_dir: SweepDir) -> pd.DataFrame:
    """The sweep as it runs, from its runs' summaries (written at each checkpoint): per run its status,
    step (of the run's max steps), test accuracy or, for held-out task metrics, the generalization metric
    of its paper (HEADLINE_GEN: question formation's first word, ...), steps per second and the time left."""
    base = config_from_dict(sweep_dir.spec["config"])
    rows = []
    for point in sweep_dir.points:
        max_steps = point_config(base, point, 0).train.max_steps
        for seed in sweep_dir.seeds:
            path = sweep_dir.run_path(seed, point)
            run = Run(path) if (path / "config.yaml").is_file() else None
            summary = run.summary if run is not None else {}
            gen = sorted(
                k[len("final_") :]
                for k in summary
                if k.startswith("final_gen_") and k not in ("final_gen_acc", "final_gen_loss")
            )
            gen = [m for m in HEADLINE_GEN if m in gen] + [m for m in gen if m not in HEADLINE_GEN]
            metric = gen[0] if gen else "test_acc" if summary else "-"  # not started, or no checkpoint yet: not known
            step, rate = summary.get("last_step"), summary.get("steps_per_s")
            status = run.status if run is not None else "not started"
            left = (max_steps - step) / rate if status == "running" and step is not None and rate else None
            rows.append(
                {
                    **point,
                    "seed": seed,
                    "status": status,
                    "step": step,
                    "max_steps": max_steps,
                    "metric": metric,
                    "value": summary.get(f"final_{metric}"),
                    "steps_per_s": rate,
                    "left_s": left,
                    "elapsed_s": summary.get("elapsed_s"),
                    "batch": summary.get("batch"),  # its batch's name; None: trained alone
                }
            )
    return pd.DataFrame(rows)


def progress_totals(table: pd.DataFrame) -> str:
    """One line: runs by status, the running runs' steps per second together, steps done of all, time left
    (the longest of the running runs', at their rates), and the runs still to start or resume at the time the
    ended runs took (time_ahead: one process's time; then divided by the processes running now, a batch
    being one process)."""
    counts = table["status"].value_counts()
    order = ["finished", "stopped_early", "running", "interrupted", "killed", "diverged", "new", "not started"]
    parts = [
        f"{counts[s]} {s.replace('_', ' ')}" for s in order + sorted(set(counts.index) - set(order)) if s in counts
    ]
    running = table[table["status"] == "running"]
    done = table["step"].fillna(0).sum()
    line = f"{len(table)} runs: " + ", ".join(parts) + f"; {done:.0f} of {table['max_steps'].sum():.0f} steps"
    if len(running):
        line += f"; {running['steps_per_s'].fillna(0).sum():.1f} steps/s running"
        if running["left_s"].notna().any():
            line += f", up to {duration(running['left_s'].max())} left for the running runs (at max steps)"
    ahead = time_ahead(table)
    if ahead is not None:
        todo = (~table["status"].isin((*DONE, "running"))).sum()
        processes = _processes(running)
        line += f"; {todo} to go: ~{duration(ahead)} of one process's time, as the ended runs took"
        line += f" (~{duration(ahead / processes)} at {processes} at a time)" if processes else ""
    return line


def _processes(table: pd.DataFrame) -> int:
    """Processes among progress_table's rows: each batch once, each run trained alone once."""
    return int(table["batch"].dropna().nunique() + table["batch"].isna().sum())


def time_ahead(table: pd.DataFrame) -> float | None:
    """Seconds of one process's time the runs not started, interrupted or killed still need (progress_table's
    rows), each estimated from the ended runs at its grid point (their median training time; deeper models
    take longer), or all ended runs' median where its point has none, times the share of its steps still to
    do. A member of a batch counts its batch's time over the batch's members (each member's elapsed_s is the
    batch's wall clock). None while no run has ended, or none is left."""
    keys = list(table.columns[: table.columns.get_loc("seed")])  # the grid's keys come first
    members = table.groupby("batch")["seed"].transform("size")  # NaN for runs trained alone
    table = table.assign(elapsed_s=table["elapsed_s"] / members.fillna(1))
    ended = table[table["status"].isin(DONE) & table["elapsed_s"].notna()]
    todo = table[~table["status"].isin((*DONE, "running"))]
    if ended.empty or todo.empty:
        return None
    at_point = {
        point if isinstance(point, tuple) else (point,): t
        for point, t in (ended.groupby(keys)["elapsed_s"].median().items() if keys else ())
    }
    overall = float(ended["elapsed_s"].median())
    left = 1 - todo["step"].fillna(0) / todo["max_steps"]  # a killed run resumes from its last checkpoint
    return sum(
        at_point.get(tuple(row[k] for k in keys), overall) * share for row, share in zip(todo.to_dict("records"), left)
    )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _same_type(value, like):
    """A grid value read back from the CSV table, as the type of the grid's value."""
    try:
        return type(like)(value)
    except (TypeError, ValueError):
        return value


def grid_summary(table: pd.DataFrame, grid_keys: Sequence[str], cross: float = 0.8) -> pd.DataFrame:
    """Per point of the grid: runs, and for every held-out task metric (max_gen_* in the table) the
    fraction of seeds whose value crosses `cross` at some point and the final mean and SD (Murty et
    al.'s depth sweeps: the inverted U), each with its 95% percentile-bootstrap interval over seeds
    (`_ci_low`, `_ci_high`; dynamics.compare.bootstrap_mean, seeded: the same table gives the same
    intervals), the share of seeds whose in-distribution twin reaches dynamics.phases.ID_LEARNED
    (`_id_learned_share`; dynamics.phases.learnt_in_distribution) and the final mean over those seeds alone
    (`_final_learnt_mean`: generalization where the training distribution was learnt, apart from the deep runs
    that never learn it);
    without those, where the runs have a convergence metric (the sweep's, e.g. test acc >= 0.9: a modular
    grid such as task.frac_train), the share of seeds that converge and the mean (with its interval) and
    median convergence step of those that do, and the median over all of them with those that never converge
    counted as later (`_median_all`; `_median_known`: False where it is only a lower bound,
    dynamics.censored_median); and the final t-score and PARSEVAL mean and SD where measured.
    Only runs that ended (finished, early-stopped, diverged) count."""
    metrics = held_out_metrics(table)
    rows = []
    for point, group in table.groupby(list(grid_keys), sort=True) if grid_keys else [((), table)]:
        row = dict(zip(grid_keys, point if isinstance(point, tuple) else (point,)))
        row["runs"] = int(group["status"].isin(DONE).sum())
        group = group[group["status"].isin(DONE)]  # runs still going (or never started) do not count yet
        for m in metrics:
            done = group[f"max_{m}"].dropna()
            crossed = (f"{m}_crossed_{cross:g}", f"{m}_crossed_ci_low", f"{m}_crossed_ci_high")
            row.update(zip(crossed, bootstrap_mean(done >= cross)))
            final = group[f"final_{m}"].dropna()
            row[f"{m}_final_mean"], row[f"{m}_final_ci_low"], row[f"{m}_final_ci_high"] = bootstrap_mean(final)
            row[f"{m}_final_sd"] = float(final.std())
            twin = f"max_id_{m[len('gen_') :]}"  # learning the in-distribution set at all (a deep model may not)
            if twin in group:
                learnt = learnt_in_distribution(group, m)
                shares = (f"{m}_id_learned_share", f"{m}_id_learned_ci_low", f"{m}_id_learned_ci_high")
                row.update(zip(shares, bootstrap_mean(learnt[group[twin].notna()])))  # of the runs that measured it
                given = (f"{m}_final_learnt_mean", f"{m}_final_learnt_ci_low", f"{m}_final_learnt_ci_high")
                row.update(zip(given, bootstrap_mean(group.loc[learnt, f"final_{m}"].dropna())))
        if not metrics and "converged" in group and group["converged"].notna().any():  # e.g. test_acc >= 0.9
            ended = group[group["converged"].notna()]
            converged = ended["converged"].astype(bool)
            row["converged_share"], row["converged_ci_low"], row["converged_ci_high"] = bootstrap_mean(converged)
            steps = ended.loc[converged, "convergence_step"].astype(float)
            step = ("convergence_step_mean", "convergence_step_ci_low", "convergence_step_ci_high")
            row.update(zip(step, bootstrap_mean(steps)))
            row["convergence_step_median"] = float(steps.median())
            median = censored_median(ended["convergence_step"], ~converged)  # a run that never converged: later
            row["convergence_step_median_all"], row["convergence_step_median_known"] = median
        for m in ("t_score", "parseval"):
            if f"final_{m}" in group:
                row[f"{m}_final_mean"] = float(group[f"final_{m}"].mean())
                row[f"{m}_final_sd"] = float(group[f"final_{m}"].std())
        rows.append(row)
    return pd.DataFrame(rows)


def held_out_metrics(table: pd.DataFrame) -> list[str]:
    """The sweep table's held-out task metrics (gen_first_word_acc, ...: max_gen_* columns), not the
    token-level gen_acc and gen_loss."""
    return [
        c[len("max_") :] for c in table.columns if c.startswith("max_gen_") and c not in ("max_gen_acc", "max_gen_loss")
    ]


def grid_peaks(table: pd.DataFrame, key: str, cross: float = 0.8) -> dict[PeakOf, tuple[dict, float]]:
    """Along a one-key grid (e.g. --depths): for each held-out task metric, and the final t-score and PARSEVAL
    where measured, where its final value's mean over seeds peaks and how often the peak lies inside the grid
    (dynamics.compare.bootstrap_peak; the runs that ended; keyed PeakOf(metric)); and, keyed PeakOf(metric,
    cross), the same for the share of seeds whose metric reaches `cross` at some point — Murty et al.'s own
    measure of the inverted U over depth (Fig. 3a; a share ties often, and a tie goes to the smaller point,
    which moves where the peak is said to be but not how often it lies inside the grid). Their t-score is
    highest at the best depth (Fig. 3b)."""
    done = table[table["status"].isin(DONE)]
    points = dict(list(done.groupby(key, sort=True)))
    metrics = held_out_metrics(table) + [m for m in ("t_score", "parseval") if f"final_{m}" in table]
    peaks = {
        PeakOf(m): bootstrap_peak({x: group[f"final_{m}"].tolist() for x, group in points.items()}) for m in metrics
    }
    for m in held_out_metrics(table):
        crossed = {x: (group[f"max_{m}"].dropna() >= cross).tolist() for x, group in points.items()}
        peaks[PeakOf(m, cross)] = bootstrap_peak(crossed)
    return peaks


def structure_correlation(table: pd.DataFrame, grid_keys: Sequence[str]) -> dict:
    """Does tree-structuredness go with generalization, run by run (Murty et al.)? Spearman's rho of the final
    t-score against the final headline held-out metric (HEADLINE_GEN: question formation's first word, ...)
    over the runs that ended and learnt the in-distribution set (a run that never learns it fails for another
    reason): {"metric": that metric, "all": (rho, p, n) pooled, "within": the same within the grid points (each
    run centred on its point's mean, so that depth itself does not count; dynamics.compare.rank_correlation)}.
    Empty without both measured."""
    metric = next((m for m in HEADLINE_GEN if f"final_{m}" in table), None)
    if metric is None or "final_t_score" not in table:
        return {}
    runs = table[table["status"].isin(DONE)]
    runs = runs[learnt_in_distribution(runs, metric)]
    x, y = runs["final_t_score"], runs[f"final_{metric}"]
    points = [tuple(row) for row in runs[list(grid_keys)].itertuples(index=False)] if grid_keys else None
    return {"metric": metric, "all": rank_correlation(x, y), "within": rank_correlation(x, y, points)}


def write_sweep_report(sweep_dir: str | Path | SweepDir, png: str | Path | None = None) -> Path:
    """SWEEP_DIR/report.html: for a grid sweep (e.g. --depths, --grid task.frac_train=...), each held-out task
    metric and the convergence step against the grid with 95% bootstrap intervals over seeds (report.grid);
    for every sweep, the share of runs converged by each step (runs still running counted as censored) and every
    run's curves; the per-point summary (grid_summary) and the sweep table; with `png`,
    the figures as PNG there too."""
    from groklab.report.grid import (
        convergence_figures,
        curve_figures,
        grid_figures,
        render_grid_page,
        structure_figures,
        survival_figures,
    )
    from groklab.report.maps import save_figures_static

    sweep_dir = sweep_dir if isinstance(sweep_dir, SweepDir) else SweepDir.open(Path(sweep_dir))
    table = sweep_table(sweep_dir)
    keys = list(sweep_dir.points[0])
    summary = grid_summary(table, keys)
    done = table[table["status"].isin(DONE)]
    curves = {
        point_label(point) or "every seed": [run.metrics for run in sweep_runs(sweep_dir, point).values()]
        for point in sweep_dir.points
    }
    figures = (
        grid_figures(done, summary, keys, grid_peaks(table, keys[0]) if len(keys) == 1 else {})
        + convergence_figures(done, summary, keys, table.attrs)
        + survival_figures(table, keys, table.attrs)
        + structure_figures(done, keys, structure_correlation(table, keys))
        + curve_figures(curves)
    )
    if not figures:
        raise ConfigError(
            f"{sweep_dir.path} has no run with metrics yet; run it (the same `groklab sweep` command resumes it) "
            "and report it again"
        )
    path = sweep_dir.write_report(render_grid_page(f"groklab sweep: {sweep_dir.path.name}", figures, summary, table))
    if png is not None:
        save_figures_static(figures, Path(png))
    return path

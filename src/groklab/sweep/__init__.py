"""Sweeps: one config over many seeds, one run per seed, run by parallel local worker processes.

Each seed trains in its own process (`python -m groklab.sweep.worker SWEEP_DIR SEED`), at most
`workers` at a time, each with cores // workers threads. A seed that fails (an error, a crash, a
killed process, a diverged run) is recorded as such and does not stop the others. Running the same
command again skips finished runs and resumes the others from their last checkpoint.

A config that fixes `data_seed` or `model_seed` keeps them fixed across the sweep; `seed` varies.
Runs are deterministic given the config, the seed and the number of threads per worker.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd

from groklab.config import RunConfig
from groklab.dynamics import convergence_times
from groklab.errors import ConfigError
from groklab.experiment import resolve
from groklab.store import Run, SweepDir

DONE = ("finished", "stopped_early", "diverged")


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


def sweep(config: RunConfig, seeds: Sequence[int], out: Union[str, Path, None] = None, *, workers: int = 1,
          threads: Optional[int] = None, device: Optional[str] = None, threshold: float = 0.9,
          progress: Callable[[str], None] = lambda line: None) -> SweepDir:
    """Train `config` once per seed into SWEEP_DIR/runs/seed_NNNN (default sweeps/NAME), `workers` at
    a time with `threads` each (default: cores // workers), then write the sweep table. Resumes a sweep
    of the same config in the same directory."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    resolve(config.model_copy(update={"seed": seeds[0]}), device)  # everything checked before any run starts
    sweep_dir = SweepDir.create_or_open(Path(out) if out else Path("sweeps") / config.name,
                                        config.model_dump(mode="json"), list(seeds), threshold)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    todo = [seed for seed in seeds if _status(sweep_dir, seed) not in DONE]
    progress(f"sweep {sweep_dir.path}: {len(seeds) - len(todo)} of {len(seeds)} runs already done; "
             f"{len(todo)} to run, {workers} at a time ({threads} thread(s) each)")
    running: dict[int, subprocess.Popen] = {}
    failed: dict[int, str] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                seed = todo.pop(0)
                running[seed] = _start(sweep_dir, seed, threads, device)
            time.sleep(0.05)
            for seed, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[seed]
                status = _status(sweep_dir, seed)
                if proc.returncode != 0 or status not in DONE:
                    failed[seed] = f"exit code {proc.returncode}; see {sweep_dir.log_path(seed)}"
                progress(f"seed {seed}: {status}" + (f" ({failed[seed]})" if seed in failed else ""))
    except KeyboardInterrupt:
        for proc in running.values():  # the runs checkpoint and stop; the next `groklab sweep` resumes them
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            proc.wait()
        raise
    finally:
        sweep_dir.write_table(sweep_table(sweep_dir, threshold, failed))
    return sweep_dir


def _start(sweep_dir: SweepDir, seed: int, threads: int, device: Optional[str]) -> subprocess.Popen:
    env = {**os.environ, "GROKLAB_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, "-m", "groklab.sweep.worker", str(sweep_dir.path), str(seed)] + ([device] if device else [])
    with open(sweep_dir.log_path(seed), "a") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def _status(sweep_dir: SweepDir, seed: int) -> str:
    path = sweep_dir.run_path(seed)
    if not (path / "config.yaml").is_file():
        return "not started"
    return Run(path).status


def sweep_runs(sweep_dir: SweepDir) -> dict[int, Run]:
    """The runs of a sweep that have started, by seed."""
    return {seed: Run(sweep_dir.run_path(seed)) for seed in sweep_dir.seeds
            if (sweep_dir.run_path(seed) / "config.yaml").is_file()}


def sweep_table(sweep_dir: SweepDir, threshold: Optional[float] = None,
                failed: Optional[dict[int, str]] = None) -> pd.DataFrame:
    """One row per seed: status, converged (test acc >= threshold, default the sweep's), the convergence
    step (censored runs are marked, not imputed), the first steps with train / test acc >= 99%, final
    values, wall time, and the error of a failed run (`failed`, else the one the stored table recorded
    while the run is still not done)."""
    threshold = sweep_dir.threshold if threshold is None else threshold
    if failed is None:
        old = sweep_dir.read_table()
        failed = {} if old is None or "error" not in old else \
            {int(seed): error for seed, error in zip(old["seed"], old["error"]) if isinstance(error, str) and error}
    runs = sweep_runs(sweep_dir)
    metrics = {seed: run.metrics for seed, run in runs.items() if not run.metrics.empty}
    conv = convergence_times(metrics, "test_acc", threshold) if metrics else pd.DataFrame()
    rows = []
    for seed in sweep_dir.seeds:
        row = {"seed": seed, "status": _status(sweep_dir, seed)}
        if seed in metrics:
            s = runs[seed].summary
            c = conv.set_index("seed").loc[seed]
            row.update(converged=bool(c["converged"]), convergence_step=int(c["step"]), censored=bool(c["censored"]),
                       step_train_acc_99=s.get("step_train_acc_99"), step_test_acc_99=s.get("step_test_acc_99"),
                       **{f"final_{k}": s.get(f"final_{k}") for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
                       last_step=s.get("last_step"), elapsed_s=s.get("elapsed_s"))
        row["error"] = failed.get(seed, "") if row["status"] not in DONE or seed in failed else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["threshold"] = threshold
    return table

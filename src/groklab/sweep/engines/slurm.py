"""The SLURM engine, through submitit: the units go out as ONE job array, several units packed into each
array task (`runs_per_job`) so a 400-run sweep does not flood the scheduler; each array task runs its
units one after another in its own process (`run_units`). SLURM's SIGTERM (scancel, pre-emption, the
time limit) makes the running unit checkpoint and stop, and the task starts no further unit; re-running
the sweep command resubmits what is not done and it resumes from its checkpoints. submitit's files (the
pickled jobs, their stdout / stderr) are in SWEEP_DIR/slurm/.

`cluster="local"` (`--on submitit-local`) takes the same path through submitit's local executor, one
process per array task on this machine: a SLURM sweep tried before it goes to the cluster, and tested."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from groklab import runtime
from groklab.errors import ConfigError
from groklab.sweep.engines import Ended, poll
from groklab.sweep.worker import INTERRUPTED, Job, run_job

MAX_ARRAY = 64  # array tasks per sweep when runs_per_job is not given: units are packed to stay under it
SIGNAL_DELAY_S = 120  # SIGUSR2 this long before the time limit (submitit's requeue signal; unused by groklab)


def run_units(jobs: Sequence[Job]) -> list[int]:
    """One array task: its units one after another; after an interrupted one (SIGTERM) the rest wait for
    the next submission."""
    codes = []
    for job in jobs:
        codes.append(run_job(job))
        if codes[-1] == INTERRUPTED:
            break
    return codes + [INTERRUPTED] * (len(jobs) - len(codes))


def slurm_parameters(
    name: str,
    threads: int,
    gpus: int,
    partition: str | None = None,
    time: str | None = None,
    mem_gb: float | None = None,
    max_jobs: int | None = None,
    **_,
) -> dict:
    """submitit's SlurmExecutor parameters (the #SBATCH lines) of one array task. `time`: minutes, or
    [D-]HH:MM[:SS]; default 24 h."""
    params = {
        "job_name": f"groklab-{name}",
        "time": _minutes(time or "24:00:00"),
        "cpus_per_task": threads,
        "signal_delay_s": SIGNAL_DELAY_S,
        "stderr_to_stdout": True,
    }
    if partition:
        params["partition"] = partition
    if mem_gb:
        params["mem"] = f"{int(math.ceil(mem_gb))}GB"
    if gpus:
        params["gpus_per_node"] = gpus
    if max_jobs:
        params["array_parallelism"] = max_jobs
    return params


class SlurmEngine:
    slots = None  # SLURM queues the array

    def __init__(self, sweep_path: str, cluster: str = "slurm", runs_per_job: int | None = None, **options):
        try:
            import submitit
        except ImportError:
            raise ConfigError("--on slurm needs submitit: pip install 'groklab[slurm]'") from None
        if cluster == "slurm" and not shutil.which("sbatch"):
            raise ConfigError(
                "--on slurm: no SLURM here (sbatch not found); run the command on the cluster's login "
                "node, or try the sweep on this machine with --on submitit-local"
            )
        self.gpus = options.pop("gpus", None)  # per array task; default: one with --device cuda
        self.submitit, self.cluster, self.options = submitit, cluster, options
        self.runs_per_job = runs_per_job
        if runs_per_job is not None and runs_per_job < 1:
            raise ConfigError(f"--runs-per-job must be at least 1, got {runs_per_job}")
        _minutes(options.get("time") or "1")  # a bad --time fails before anything is submitted
        self.folder = Path(sweep_path) / "slurm"
        self.name = Path(sweep_path).name

    def submit(self, jobs: Sequence[Job]) -> list[tuple]:
        if not jobs:
            return []
        per = self.runs_per_job or (
            max(1, math.ceil(len(jobs) / max(1, runtime.cpu_threads() // jobs[0].threads)))
            if self.cluster == "local"
            else max(1, math.ceil(len(jobs) / MAX_ARRAY))
        )
        chunks = [list(jobs[i : i + per]) for i in range(0, len(jobs), per)]
        gpus = jobs[0].gpus if self.gpus is None else self.gpus
        if self.cluster == "local":
            executor = self.submitit.LocalExecutor(folder=self.folder)
            executor.update_parameters(
                timeout_min=_minutes(self.options.get("time") or "24:00:00"),
                gpus_per_node=gpus,
                cpus_per_task=jobs[0].threads,
            )
        else:
            executor = self.submitit.SlurmExecutor(folder=self.folder)
            executor.update_parameters(**slurm_parameters(self.name, jobs[0].threads, gpus, **self.options))
        submitted = executor.map_array(run_units, chunks)
        return [(sub, i) for sub, chunk in zip(submitted, chunks) for i in range(len(chunk))]

    def wait(self, handles: Sequence[tuple], timeout: float) -> dict[tuple, Ended]:
        done = poll(lambda: {job for job, _ in handles if job.done()}, timeout, 0.2)
        ended = {}
        for job in done:
            try:
                codes, error = job.result(), ""
            except Exception as err:  # the array task failed (killed, timed out, raised): its units say how far
                codes, error = (
                    None,
                    f"SLURM job {job.job_id}: {str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__}",
                )
            for handle in handles:
                if handle[0] is job:
                    ended[handle] = Ended(codes[handle[1]], "") if codes else Ended(1, error)
        return ended

    def cancel(self, handles: Sequence[tuple]) -> None:
        jobs = {id(job): job for job, _ in handles}.values()
        for job in jobs:
            if job.done():
                continue
            process = getattr(job, "_process", None)  # submitit's local controller: it forwards SIGTERM to the task
            if self.cluster == "local" and process is not None:
                process.send_signal(signal.SIGTERM)  # (its cancel() sends SIGINT, then SIGKILL a second later)
            else:
                job.cancel(check=False)  # scancel: SIGTERM, the running unit checkpoints and stops
        for job in jobs:
            with contextlib.suppress(Exception):  # a cancelled job's result is an error; its runs are on disk
                job.wait()

    def close(self) -> None:
        pass


def _minutes(text: str) -> int:
    """'90' -> 90; '1:30:00' -> 90; '2-00:00:00' -> 2880."""
    try:
        text = str(text)
        days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            return int(days) * 1440 + parts[0]
        hours, minutes, seconds = (parts + [0])[:3]
        return max(1, int(days) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60))
    except ValueError:
        raise ConfigError(f"--time takes minutes or [D-]HH:MM[:SS]; got '{text}'") from None

"""One unit of a sweep: a run, or a batch of runs trained together, started or resumed (finished runs are
left as they are). Every engine runs a unit through `run_unit`: the local engine in its own process, as
`main(SWEEP_DIR, '[[POINT, SEED], ...]', [--device=DEVICE])` (also `python -m groklab.sweep.worker ARGS`)

(POINT: the {key.path: value} of the sweep's grid, {} without one; GROKLAB_THREADS: threads), Ray and
SLURM inside their own worker processes (`run_job`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass

from groklab.config import config_from_dict
from groklab.errors import RunDirError, UserError
from groklab.experiment import resume, run, run_batch
from groklab.store import Run, SweepDir

OK, USER_ERROR, BUSY, INTERRUPTED = 0, 2, 75, 130  # exit codes of a unit (75: EX_TEMPFAIL, a run locked by another)
BUSY_WAIT_S = 30  # how long a unit waits for a run another process still trains (a killed driver's task dying)


@dataclass(frozen=True)
class Job:
    """A unit of work as an engine sees it: which runs, where, with how many threads, logging where."""

    sweep: str  # the sweep directory (on storage every node sees)
    members: tuple  # ((point, seed), ...): one run, or the members of a batch
    threads: int
    device: str | None
    log: str  # the unit's log file
    label: str  # for people: "seed 3", "batch-1a2b3c4d5e (8 runs)"

    @property
    def gpus(self) -> int:
        return int(bool(self.device) and self.device.startswith("cuda"))


def run_unit(sweep_path: str, members: list, threads: int | None = None, device: str | None = None) -> int:
    """Train (or resume) the unit's runs into the sweep directory; the exit code (OK, USER_ERROR, BUSY when a
    run is still trained by another process after BUSY_WAIT_S, INTERRUPTED when asked to stop)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        code = _run_unit(sweep_path, members, threads, device)
        if code != BUSY or time.monotonic() > deadline:
            return code
        time.sleep(1.0)


def _run_unit(sweep_path: str, members: list, threads: int | None, device: str | None) -> int:
    from groklab.sweep import batch_name, point_config

    sweep_dir = SweepDir.open(sweep_path)
    members = [(dict(point), int(seed)) for point, seed in members]
    paths = [sweep_dir.run_path(seed, point) for point, seed in members]
    base = config_from_dict(sweep_dir.spec["config"])
    label = (
        f"seed {members[0][1]}" if len(members) == 1 else batch_name(tuple((tuple(p.items()), s) for p, s in members))
    )
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        if len(members) > 1:
            runs = run_batch(
                [point_config(base, point, seed) for point, seed in members],
                paths,
                sweep_dir.batch_state_path(label),
                name=label,
                device=device,
                threads=threads,
            )
        elif (paths[0] / "config.yaml").is_file():
            runs = [resume(paths[0], device=device, report=False, threads=threads)]
        else:
            point, seed = members[0]
            runs = [run(point_config(base, point, seed), paths[0], device=device, report=False, threads=threads)]
    except RunDirError as err:
        print(f"groklab sweep worker, {label}: error: {err}", file=sys.stderr)
        return BUSY if "being trained by another process" in str(err) else USER_ERROR
    except UserError as err:
        print(f"groklab sweep worker, {label}: error: {err}", file=sys.stderr)
        return USER_ERROR
    return INTERRUPTED if any(Run(r.path).status == "interrupted" for r in runs) else OK


def run_job(job: Job) -> int:
    """`run_unit` in this process, its output appended to the unit's log (the Ray and SLURM engines)."""
    with open(job.log, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"groklab sweep worker: {job.label} on {os.uname().nodename}, pid {os.getpid()}", flush=True)
        return run_unit(job.sweep, list(job.members), job.threads, job.device)


def main(argv: list[str]) -> int:
    device = next((a.split("=", 1)[1] for a in argv[2:] if a.startswith("--device=")), None)
    threads = int(os.environ["GROKLAB_THREADS"]) if "GROKLAB_THREADS" in os.environ else None
    return run_unit(argv[0], json.loads(argv[1]), threads, device)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

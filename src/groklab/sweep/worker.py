"""One unit of a sweep: a run, or a batch of runs trained together, started or resumed (finished runs are
left as they are). Every engine runs a unit through `run_unit`: the local engine in its own process, as
`main(SWEEP_DIR, '[[POINT, SEED], ...]', [--device=DEVICE], [--report-to=NAME,...])` (also
`python -m groklab.sweep.worker ARGS`)

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
from groklab.store.trackers import ReportTo

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
    report_to: tuple[str, ...] = ()  # trackers the runs mirror to (`groklab.store.trackers`)

    @property
    def gpus(self) -> int:
        return int(bool(self.device) and self.device.startswith("cuda"))


def run_unit(
    sweep_path: str,
    members: list,
    threads: int | None = None,
    device: str | None = None,
    report_to: tuple[str, ...] = (),
) -> int:
    """Train (or resume) the unit's runs into the sweep directory, mirrored to the trackers `report_to` (in the
    sweep's group); the exit code (OK, USER_ERROR, BUSY when a run is still trained by another process after
    BUSY_WAIT_S, INTERRUPTED when asked to stop)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        code = _run_unit(sweep_path, members, threads, device, report_to)
        if code != BUSY or time.monotonic() > deadline:
            return code
        time.sleep(1.0)


def _run_unit(sweep_path: str, members: list, threads: int | None, device: str | None, report_to: tuple) -> int:
    from groklab.sweep import batch_name, point_config

    sweep_dir = SweepDir.open(sweep_path)
    members = [(dict(point), int(seed)) for point, seed in members]
    paths = [sweep_dir.run_path(seed, point) for point, seed in members]
    base = config_from_dict(sweep_dir.spec["config"])
    label = (
        f"seed {members[0][1]}" if len(members) == 1 else batch_name(tuple((tuple(p.items()), s) for p, s in members))
    )
    try:
        trackers = ReportTo.of(ReportTo(tuple(report_to), sweep_dir.path.name, sweep_dir.path))
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
                report_to=trackers,
            )
        elif (paths[0] / "config.yaml").is_file():
            runs = [resume(paths[0], device=device, report=False, threads=threads, report_to=trackers)]
        else:
            point, seed = members[0]
            config = point_config(base, point, seed)
            runs = [run(config, paths[0], device=device, report=False, threads=threads, report_to=trackers)]
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
        return run_unit(job.sweep, list(job.members), job.threads, job.device, job.report_to)


def main(argv: list[str]) -> int:
    device = next((a.split("=", 1)[1] for a in argv[2:] if a.startswith("--device=")), None)
    report_to = next((a.split("=", 1)[1] for a in argv[2:] if a.startswith("--report-to=")), "")
    threads = int(os.environ["GROKLAB_THREADS"]) if "GROKLAB_THREADS" in os.environ else None
    return run_unit(argv[0], json.loads(argv[1]), threads, device, tuple(filter(None, report_to.split(","))))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

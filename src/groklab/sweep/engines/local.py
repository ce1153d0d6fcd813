"""The local engine: each unit in its own worker process on this machine, `workers` at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from groklab.sweep.engines import Ended, poll
from groklab.sweep.worker import Job

WORKER = "import sys; from groklab.sweep.worker import main; sys.exit(main(sys.argv[1:]))"


class LocalEngine:
    def __init__(self, workers: int):
        self.slots = workers

    def submit(self, jobs: Sequence[Job]) -> list[subprocess.Popen]:
        return [self._start(job) for job in jobs]

    @staticmethod
    def _start(job: Job) -> subprocess.Popen:
        env = {**os.environ, "GROKLAB_THREADS": str(job.threads), "OMP_NUM_THREADS": str(job.threads)}
        # `python -m groklab.sweep.worker` would import the module twice (the package `groklab.sweep` imports
        # it) and runpy warns about it in every log; calling its `main` runs it once
        args = [sys.executable, "-c", WORKER, job.sweep, json.dumps([[dict(p), s] for p, s in job.members])]
        args += [f"--device={job.device}"] if job.device else []
        args += [f"--report-to={','.join(job.report_to)}"] if job.report_to else []
        with open(job.log, "a") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait(self, handles: Sequence[subprocess.Popen], timeout: float) -> dict[subprocess.Popen, Ended]:
        return poll(
            lambda: {proc: Ended(proc.returncode) for proc in handles if proc.poll() is not None}, timeout, 0.05
        )

    def cancel(self, handles: Sequence[subprocess.Popen]) -> None:
        for proc in handles:  # the runs checkpoint and stop
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in handles:
            proc.wait()

    def close(self) -> None:
        pass

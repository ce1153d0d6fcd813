"""The Ray engine: each unit is a Ray task on any node of a cluster, with its resources declared (CPUs =
its threads, one GPU on CUDA), run in the task's worker process (`worker.run_job`). Ray retries a task
whose worker process dies (RETRIES times); the retried unit resumes from its runs' checkpoints. Cancelling
a task sends its worker SIGINT: the runs checkpoint and stop. The sweep directory must be on storage every
node sees (a shared filesystem); the driver keeps nothing a rerun cannot rebuild from it."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from groklab.errors import ConfigError
from groklab.sweep.engines import Ended
from groklab.sweep.worker import Job, run_job

RETRIES = 3  # a unit whose worker process dies is run again this many times (Ray's max_retries)
CANCEL_WAIT_S = 600  # how long the driver waits, after Ctrl-C, for the units to checkpoint and stop


class RayEngine:
    slots = None  # Ray queues the tasks and places each where its resources are free

    def __init__(self, address: str = "auto"):
        try:
            import ray
        except ImportError:
            raise ConfigError("--on ray needs Ray: pip install 'groklab[ray]'") from None
        self.ray = ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        if address not in ("auto", "local"):
            _check_reachable(address)
        try:
            ray.init(
                address=None if address == "local" else address,
                logging_level="ERROR",
                log_to_driver=False,
                include_dashboard=False if address == "local" else None,
                ignore_reinit_error=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot reach a Ray cluster at --address {address} ({str(err).splitlines()[0]}); "
                "start one with `ray start --head` or pass --address HOST:PORT"
            ) from None
        self.task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(run_job)

    def submit(self, jobs: Sequence[Job]) -> list:
        return [
            self.task.options(num_cpus=job.threads, num_gpus=job.gpus, name=f"groklab {job.label}").remote(job)
            for job in jobs
        ]

    def wait(self, handles: Sequence, timeout: float) -> dict:
        if not handles:
            return {}
        ready, _ = self.ray.wait(list(handles), num_returns=len(handles), timeout=timeout)  # all, or those by then
        ended = {}
        for ref in ready:
            try:
                ended[ref] = Ended(self.ray.get(ref))
            except self.ray.exceptions.RayError as err:  # the task raised, or its worker died RETRIES + 1 times
                ended[ref] = Ended(1, f"Ray: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
        return ended

    def cancel(self, handles: Sequence) -> None:
        for ref in handles:
            self.ray.cancel(ref)  # SIGINT in the task: its runs checkpoint and stop
        self.ray.wait(list(handles), num_returns=len(handles), timeout=CANCEL_WAIT_S)

    def close(self) -> None:
        self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """Ray waits minutes on an address nobody answers; say so at once."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address takes auto, local or HOST:PORT; got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
            "`ray start --head` or check --address"
        ) from None

"""Where a sweep's units of work run. One small module per engine behind one narrow interface; what to
run, what is done and how to resume stays in `groklab.sweep`, which knows no engine.

    engine.slots                  units it runs at once (None: as many as the engine can place)
    engine.submit(jobs)           start these units (`worker.Job`), in order; a handle for each
    engine.wait(handles, timeout) the handles whose unit has ended since, with its exit code and error
    engine.cancel(handles)        ask their units to checkpoint and stop; returns when they have
    engine.close()

Engines: `local` (worker processes on this machine), `ray` (tasks on a Ray cluster), `slurm` (a job
array through submitit; `submitit-local`: the same path through submitit's local executor).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from groklab.sweep.worker import Job

ENGINES = ("local", "ray", "slurm", "submitit-local")


@dataclass(frozen=True)
class Ended:
    code: int  # the unit's exit code (worker.OK, USER_ERROR, BUSY, INTERRUPTED, or a crash's)
    error: str = ""  # what went wrong, in one line, where the engine knows more than the code


class Engine(Protocol):
    slots: int | None

    def submit(self, jobs: Sequence[Job]) -> list[Hashable]: ...
    def wait(self, handles: Sequence[Hashable], timeout: float) -> dict[Hashable, Ended]: ...
    def cancel(self, handles: Sequence[Hashable]) -> None: ...
    def close(self) -> None: ...


T = TypeVar("T")


def poll(finished: Callable[[], T], timeout: float, every: float) -> T:
    """`finished()` again every `every` seconds until it is not empty or `timeout` seconds have passed (an
    engine's `wait` where the engine itself cannot block)."""
    deadline = time.monotonic() + timeout
    while True:
        ended = finished()
        if ended or time.monotonic() >= deadline:
            return ended
        time.sleep(every)


@dataclass(frozen=True)
class EngineOptions:
    """How to reach an engine and what to ask it for; each engine reads its own fields."""

    workers: int = 1  # local: processes at once
    address: str = "auto"  # ray: auto (the cluster this machine belongs to), HOST:PORT, or local (a private one)
    slurm: dict[str, Any] = field(default_factory=dict)  # slurm: partition, time, mem_gb, gpus, runs_per_job, max_jobs


def make_engine(name: str, sweep_path: str, options: EngineOptions) -> Engine:
    """The engine `name` (one of ENGINES); ConfigError in one line when it is not installed or not there."""
    if name == "local":
        from groklab.sweep.engines.local import LocalEngine

        return LocalEngine(options.workers)
    if name == "ray":
        from groklab.sweep.engines.ray import RayEngine

        return RayEngine(options.address)
    if name in ("slurm", "submitit-local"):
        from groklab.sweep.engines.slurm import SlurmEngine

        return SlurmEngine(sweep_path, cluster="slurm" if name == "slurm" else "local", **options.slurm)
    from groklab.errors import ConfigError

    raise ConfigError(f"--on takes one of {', '.join(ENGINES)}; got '{name}'")

"""The process's compute settings, chosen to keep groklab's speed on shared machines (laptops, lab
servers, a sweep's neighbours) and late in training. Imported by `groklab/__init__` before torch.

- **Threads** (`cpu_threads`): the CPUs this process may actually use — its affinity mask, capped by
  a cgroup CPU quota (containers, SLURM) — not the machine's core count that torch assumes.
- **OpenMP waiting** (`configure_openmp`): torch's OpenMP threads spin up to ~300k iterations at every
  barrier by default (libgomp's GOMP_SPINCOUNT). When another busy process shares the cores, a
  spinning thread burns the time slice its descheduled partner needs, and a small model's step, made
  of hundreds of short parallel regions, falls off a cliff (measured on 2 cores: 25 ms quiet, over
  1 s beside another torch process). groklab bounds the spin (SPINCOUNT below) so a waiting thread
  soon sleeps; `benchmarks/contention.py` measures the trade. It must be set before torch loads
  libgomp; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
- **Denormals** (`flush_denormals`): after memorization, gradients and Adam moments are tiny and
  become denormal floats, which Intel CPUs handle on a slow microcode path (the canonical step went
  from 51 to 181 ms per step by step 7k on a Xeon). Training flushes them to zero, in the main
  thread and in every OpenMP worker thread (the FTZ / DAZ flags are per thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

SPINCOUNT = "1000"  # iterations a waiting OpenMP thread spins before it sleeps (libgomp default: 300000)


def configure_openmp() -> None:
    """Bound OpenMP's spin-waiting unless the user chose a policy; no effect once libgomp is loaded."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (as lscpu prints it), for the records of timings: AMD and Intel differ up to 3x."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown CPU"
            )
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by this process's cgroup CPU quota (v2 cpu.max or v1 cfs quota / period), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_threads() -> int:
    """Threads for this process: the CPUs in its affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def set_threads(threads: int | None = None) -> int:
    """Use `threads` (default: `cpu_threads()`) for torch's intra-op parallelism; returns the number."""
    import torch

    threads = threads or cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def flush_denormals(on: bool = True) -> bool:
    """Flush denormal floats to zero (FTZ / DAZ), or stop flushing them, in this thread and in every thread
    of torch's OpenMP team (the flags are per thread; torch.set_flush_denormal sets the caller's only).
    Returns False where the CPU has no such mode."""
    import torch

    if not torch.set_flush_denormal(on):
        return False
    threads = torch.get_num_threads()
    gomp = _libgomp() if threads > 1 else None
    if gomp is not None:  # run torch.set_flush_denormal once in each thread of a team of this size
        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
        gomp.GOMP_parallel(callback, None, ctypes.c_uint(threads), ctypes.c_uint(0))
    return True


@contextlib.contextmanager
def denormals_flushed(on: bool = True) -> Iterator[None]:
    """Flush denormals inside the block (training), and not after it (a notebook's own work)."""
    flushed = on and flush_denormals(True)
    try:
        yield
    finally:
        if flushed:
            flush_denormals(False)


def _libgomp() -> ctypes.CDLL | None:
    """The libgomp torch loaded (its own copy in a pip wheel), or None."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]), None)
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None

"""How many seeds an hour: seed-steps per second of a sweep, one run per process versus batched runs.

For each preset, measured end to end in the same run of this script (evaluation, live measures,
checkpoints and process start-up included, early stopping off so every run does the same steps):
  (a) one run at a time, on all the CPUs        `groklab sweep PRESET --seeds 0-1 --workers 1`
  (b) the process pool, 2 workers of 1 thread    `groklab sweep PRESET --seeds 0-7 --workers 2`, 0-39
      (on 2 CPUs, what `groklab sweep` does when left to choose; (a) was its default until 2026-12-02)
  (c) batches of 8 and of 40 (or --sizes)        `groklab sweep PRESET --seeds 0-7 --batch 8`, 0-39 --batch 40
  (d) two half batches, 1 thread each            `groklab sweep PRESET --seeds 0-7 --batch 4 --workers 2 --threads 1`
and the ratios of (c) and (d) to (b) over the same seeds (each run of the pool starts its own process: that
start-up, ~2 s of imports, is part of what batching saves, so both sides run the same number of runs). Steps per run are cut (--steps) so the whole benchmark takes minutes; the
figures are seed-steps per second, which a full run's length does not change much once start-up is
amortised (that is why each unit runs at least a few hundred steps). Prints the CPU it ran on.

    python benchmarks/seeds_per_hour.py [--presets quick,hu-sparse-parity,...] [--sizes 8,40] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from groklab.runtime import cpu_name

STEPS = {
    "quick": 1000,
    "hu-sparse-parity": 1920,
    "hu-mod-add": 600,
    "nanda-mod-add": 200,
    "structural-qf-lab": 200,
    "grokfast-ema": 1000,
}
EVAL = {"structural-qf-lab": 100}  # evaluations (and checkpoints) scaled down with the steps


def timed_sweep(preset: str, steps: int, seeds: int, extra: list[str]) -> float:
    """Wall seconds of `groklab sweep` over `seeds` seeds, `steps` steps each."""
    sets = ["--set", f"train.max_steps={steps}", "--set", "train.early_stop=null"]
    if preset in EVAL:
        every = EVAL[preset]
        sets += [
            "--set",
            f"train.eval_every={every}",
            "--set",
            f"train.checkpoint_every={every}",
            "--set",
            f"measures.every={every}",
        ]
    exe = os.path.join(os.path.dirname(sys.executable), "groklab")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [exe, "sweep", preset, *sets, "--seeds", f"0-{seeds - 1}", "--out", f"{tmp}/s", *extra],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(STEPS))
    parser.add_argument("--sizes", default="8,40", help="batch sizes")
    parser.add_argument("--steps", type=float, default=1.0, help="scale the steps per run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cpus = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_name()}; {cpus} CPUs for this process; device {args.device}; nothing else running unless stated")
    print(
        f"{'preset':20s} {'steps':>6s} {'(a) 1 at a time':>17s} "
        + " ".join(f"{f'{n} runs: (b) pool / (c) batch / (d) 2 half':>40s}" for n in sizes)
        + "   (c) / pool, (d) / pool"
    )
    for preset in args.presets.split(","):
        steps = max(1, int(STEPS.get(preset, 500) * args.steps))
        dev = ["--device", args.device]
        rate = {"a": 2 * steps / timed_sweep(preset, steps, 2, ["--workers", "1", *dev])}
        for n in sizes:
            rate["b", n] = n * steps / timed_sweep(preset, steps, n, ["--workers", "2", "--threads", "1", *dev])
            rate[n] = n * steps / timed_sweep(preset, steps, n, ["--batch", str(n), "--workers", "1", *dev])
            half = ["--batch", str(max(1, n // 2)), "--workers", "2", "--threads", "1", *dev]
            rate["d", n] = n * steps / timed_sweep(preset, steps, n, half)
        print(
            f"{preset:20s} {steps:6d} {rate['a']:13.1f} s/s "
            + " ".join(f"{rate['b', n]:9.1f} / {rate[n]:7.1f} / {rate['d', n]:7.1f} s/s" for n in sizes)
            + "   "
            + ", ".join(f"x{rate[n] / rate['b', n]:.2f} x{rate['d', n] / rate['b', n]:.2f}" for n in sizes),
            flush=True,
        )
    print("s/s: seed-steps per second (seeds an hour = s/s * 3600 / steps per run)")


if __name__ == "__main__":
    main()

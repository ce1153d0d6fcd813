"""Step time of the canonical run (nanda-mod-add) on a quiet and on a shared CPU, old and new settings.

A researcher's laptop or lab server is rarely idle. This prints the median ms per training step for
  old: torch's defaults (one thread per core, libgomp's default spin-wait GOMP_SPINCOUNT=300000)
  new: groklab's defaults (threads = CPUs this process may use, bounded spin-wait; groklab.runtime)
each measured in a fresh process (the OpenMP settings are read when torch loads), in interleaved
rounds, under three conditions:
  quiet       nothing else running
  busy loop   one other process spinning in a pure-Python loop (one core)
  neighbour   one other process training the same model with the same settings (a sweep's neighbour)
The cliff is intermittent (it depends on how the two processes' threads meet the scheduler), so each
cell gives the median and the worst of the rounds, in ms per step. Also prints the CPU (lscpu's model
name) and the ratios contended / quiet and new / old.

    python benchmarks/contention.py [--rounds 3] [--steps 20] [--spin 1000 --spin 100 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def child(steps: int) -> None:
    """Time `steps` canonical training steps in this process (after 3 warm-up steps); print the median ms."""
    import groklab
    from groklab import runtime
    from groklab.experiment import resolve
    from groklab.models import build_model
    from groklab.training import Trainer

    threads = os.environ.get("BENCH_THREADS")
    runtime.set_threads(int(threads) if threads else None)
    prepared = resolve(groklab.load_preset("nanda-mod-add"))
    trainer = Trainer(prepared.task, build_model(prepared.model, 0), prepared.config.train, seed=0)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        trainer.train_step()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    print(f"{statistics.median(times):.2f}")


def settings(spins: list[str]) -> dict[str, dict[str, str]]:
    import torch

    cores = str(torch.get_num_threads())  # torch's default: one thread per physical core
    out = {"old (torch defaults)": {"GOMP_SPINCOUNT": "300000", "BENCH_THREADS": cores}, "new (groklab)": {}}
    for spin in spins:
        out[f"spin {spin}"] = {"GOMP_SPINCOUNT": spin}
    return out


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}


def measure(env: dict[str, str], condition: str, steps: int) -> float:
    full = {**clean_env(), **env}
    other = None
    if condition == "busy loop":
        other = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    elif condition == "neighbour":
        other = subprocess.Popen(
            [sys.executable, HERE, "--child", "--steps", "100000"], env=full, stdout=subprocess.DEVNULL
        )
    try:
        if other is not None:
            time.sleep(2.5)  # the neighbour is past its imports and training
        result = subprocess.run(
            [sys.executable, HERE, "--child", "--steps", str(steps)],
            env=full,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(result.stdout.split()[-1])
    finally:
        if other is not None:
            other.kill()
            other.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--spin", action="append", default=[], help="also measure this GOMP_SPINCOUNT")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.steps)

    conditions = ("quiet", "busy loop", "neighbour")
    runs = settings(args.spin)
    results = {(name, c): [] for name in runs for c in conditions}
    for _ in range(args.rounds):
        for condition in conditions:
            for name, env in runs.items():
                results[name, condition].append(measure(env, condition, args.steps))
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "..", "src"))
    from groklab.runtime import SPINCOUNT, cpu_name, cpu_threads

    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, groklab threads {cpu_threads()}, "
        f"groklab GOMP_SPINCOUNT {SPINCOUNT}; medians of {args.rounds} rounds of {args.steps} steps"
    )
    print(f"{'setting':22s} " + " ".join(f"{c:>22s}" for c in conditions) + "   contended / quiet: median, worst")
    med = {key: statistics.median(values) for key, values in results.items()}
    worst = {key: max(values) for key, values in results.items()}
    for name in runs:
        quiet = med[name, "quiet"]
        cells = [f"{med[name, c]:6.1f} (max {worst[name, c]:6.1f})" for c in conditions]
        ratios = max(med[name, c] for c in conditions[1:]) / quiet, max(worst[name, c] for c in conditions[1:]) / quiet
        print(f"{name:22s} " + " ".join(f"{cell:>22s}" for cell in cells) + f"   {ratios[0]:5.1f}x, {ratios[1]:5.1f}x")
    old, new = "old (torch defaults)", "new (groklab)"
    print("new / old: " + ", ".join(f"{c} {med[new, c] / med[old, c]:.2f}" for c in conditions))
    print(
        "rounds (ms): "
        + "; ".join(f"{n} {c}: {', '.join(f'{v:.0f}' for v in results[n, c])}" for n in (old, new) for c in conditions)
    )


if __name__ == "__main__":
    main()

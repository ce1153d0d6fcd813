"""The LLC and `structure` along a run's checkpoints, and what each costs per checkpoint.

    python benchmarks/llc_curve.py RUN_DIR [--steps 0,500,1100,3000,6100,6900,8600,12100] [--threads 2]

Prints, per checkpoint: train / test accuracy, `structure`, the LLC with its SD over chains, the step size
the calibration chose and how many it tried, and the seconds each measure took. Prints the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from groklab.measures.registry import _llc
from groklab.measures.structure import structure
from groklab.runtime import cpu_name
from groklab.store import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", default="0,500,1100,3000,6100,6900,8600,12100")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(args.run_dir)
    task, metrics = run.task, run.metrics.set_index("step")
    print(f"CPU: {cpu_name()}; {torch.get_num_threads()} threads; nothing else running unless stated")
    for step in [int(s) for s in args.steps.split(",")]:
        model = run.model(step)
        start = time.perf_counter()
        value = structure(model, task)["structure"]
        took_structure = time.perf_counter() - start
        start = time.perf_counter()
        llc = _llc(model, task)
        took_llc = time.perf_counter() - start
        print(
            f"step {step:6d}  train_acc {metrics.loc[step, 'train_acc']:.3f}  test_acc {metrics.loc[step, 'test_acc']:.3f}"
            f"  structure {value:.3f} ({took_structure:.2f} s)  llc {llc['llc']:8.2f} sd {llc['llc_sd']:.2f}"
            f"  epsilon {llc['llc_epsilon']:g} of {llc['llc_tried']} tried ({took_llc:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

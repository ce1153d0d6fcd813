"""What an engine costs per run: 100 tiny runs (`quick`, 50 steps) through each engine, in the same run of
this script, and the seconds per run beyond the runs' own training time.

    overhead per run = (wall seconds x slots - sum of the runs' training seconds) / runs

where slots = the units the engine runs at once here (the CPUs, one thread each) and a run's training
seconds are its summary's elapsed_s (training, evaluation, live measures, checkpoints). What is left is
starting processes or tasks, importing torch, building the task and model, scheduling and polling.
  local           `groklab sweep quick ... --workers 2 --threads 1`  (a process per run)
  ray             `--on ray --address HOST:PORT --threads 1`  on a Ray head started here (`ray start --head`)
  submitit-local  `--on submitit-local --threads 1`  (SLURM's path: one job array, runs packed per task)

Then, with --project, the paper-scale depth sweep of Murty et al. (5 depths x 10 seeds x 300k steps of
`structural-qf`) projected from seconds per step measured here: a projection, stated as such.

    python benchmarks/sweep_overhead.py [--runs 100] [--engines local,ray,submitit-local] [--project]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from groklab.runtime import cpu_name

BIN = Path(sys.executable).parent


def ray_head(tmp: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--temp-dir={tmp}",
            f"--num-cpus={len(os.sched_getaffinity(0))}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return head, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)


def stop(head: subprocess.Popen, tmp: str) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", tmp], check=False)


def timed(engine: str, runs: int, steps: int, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds of the sweep and the sum of its runs' training seconds."""
    args = [
        str(BIN / "groklab"),
        "sweep",
        "quick",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        "train.early_stop=null",
        "--seeds",
        f"0-{runs - 1}",
        "--threads",
        "1",
        "--on",
        engine,
        "--out",
        str(out),
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    wall = time.perf_counter() - start
    train = sum(json.loads((p / "summary.json").read_text())["elapsed_s"] for p in (out / "runs").glob("seed_*"))
    return wall, train


def project(depths: list[int], steps: int) -> None:
    """Seconds per step of structural-qf (Murty et al.'s setting) at each depth, here, and the sweep's cost."""
    import torch

    from groklab.config import load_preset
    from groklab.experiment import _trainer, resolve

    print(
        f"\nprojection (not a measurement of the sweep): structural-qf, {steps} timed steps per depth after 2 warm-up "
        f"steps, {torch.get_num_threads()} threads"
    )
    total = 0.0
    for depth in depths:
        config = load_preset("structural-qf")
        config = config.model_copy(update={"model": config.model.model_copy(update={"n_layers": depth})})
        trainer = _trainer(resolve(config, "cpu"), None)
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        per = (time.perf_counter() - start) / steps
        run_h = per * config.train.max_steps / 3600
        total += 10 * run_h
        print(
            f"  depth {depth:2d}: {per * 1e3:7.0f} ms/step -> {run_h:7.1f} h per run of {config.train.max_steps} steps"
        )
    print(
        f"  5 depths x 10 seeds: {total:.0f} CPU-machine-hours on this machine; on N such nodes of a Ray cluster or "
        f"N SLURM array tasks at once: {total:.0f}/N hours"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--engines", default="local,ray,submitit-local")
    parser.add_argument("--project", action="store_true", help="also project the paper-scale depth sweep")
    parser.add_argument("--project-steps", type=int, default=3)
    args = parser.parse_args()
    slots = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_name()}; {slots} CPUs, {slots} runs at once, 1 thread each; nothing else running unless stated")
    print(f"{args.runs} runs of quick, {args.steps} steps each")
    print(f"{'engine':16s} {'wall s':>8s} {'train s (sum)':>14s} {'overhead s/run':>15s}")
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="bench", dir="/tmp") as tmp:
            head = None
            extra = ["--workers", str(slots)] if engine == "local" else []
            if engine == "ray":
                head, address = ray_head(f"{tmp}/ray")
                extra = ["--address", address]
            try:
                wall, train = timed(engine, args.runs, args.steps, Path(tmp) / "s", extra)
            finally:
                if head is not None:
                    stop(head, tmp)
        print(f"{engine:16s} {wall:8.1f} {train:14.1f} {(wall * slots - train) / args.runs:15.2f}", flush=True)
    if args.project:
        project([2, 4, 6, 8, 10], args.project_steps)


if __name__ == "__main__":
    main()

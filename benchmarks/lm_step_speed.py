"""Training-step time of the structural-grokking lab model with groklab's CPU dropout beside torch's.

The structural-qf-lab preset (6 layers since this session; 4 when measured for the README; d_model 64,
batch 32, dropout 0.1 in five places per block) on CPU: torch's `F.dropout` draws each mask element with
`bernoulli_`, the largest item of this model's step in torch.profiler (39% of self CPU time, profiler
overhead included) on the 2-core machine; `groklab.models.transformer.Dropout` draws 15 bits per
element from 63-bit draws of the same generator. Times --steps training steps with each (same model, data
and seed), after --warmup steps, interleaved in --rounds rounds (the median round of each: a load that
changes during the run slows them alike), and prints ms/step and the ratios; also groklab's dropout as it was until
2026-12-02 (x times a bool mask, then the scale: the same numbers as today's float mask). With --batch M,
also a population of M seeds (`groklab.training.population`, the members under torch.func.vmap, where
groklab used F.dropout until 2026-12-02) with each, in ms per member-step, beside the one run. Nothing is
asserted.

    python benchmarks/lm_step_speed.py [--preset structural-qf-lab] [--steps 200] [--warmup 20] [--threads N]
                                       [--batch M] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from groklab.config import load_preset
from groklab.experiment import resolve
from groklab.models import build_model, transformer
from groklab.training.loop import Trainer
from groklab.training.population import Population


class TorchDropout(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)


class BoolMaskDropout(transformer.Dropout):
    """groklab's dropout until 2026-12-02: one run's mask as today, applied as x * bool mask * scale;
    F.dropout under vmap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch._C._functorch.is_functorch_wrapped_tensor(x):
            return F.dropout(x, self.p, True)
        n, cut = x.numel(), round(self.p * 32768)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
        return x * ((bits & 0x7FFF) >= cut) * (32768 / (32768 - cut))


def trainer(prepared, dropout_cls, seed: int = 0) -> Trainer:
    model = build_model(prepared.model, seed)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, transformer.Dropout):
                setattr(module, name, dropout_cls(child.p))
    return Trainer(prepared.task, model, prepared.config.train, seed=seed)


def stepper(prepared, dropout_cls, members: int = 1):
    """A training step of one run (members=1) or of a population of `members` seeds."""
    if members == 1:
        return trainer(prepared, dropout_cls).train_step
    return Population([trainer(prepared, dropout_cls, seed) for seed in range(members)]).train_step


def ms_per_step(steps: dict, n: int, warmup: int, rounds: int) -> dict:
    """Milliseconds per member-step of each of `steps` ({(name, members): step}), interleaved: `rounds` rounds
    of n // rounds steps of each in turn, the median round of each, so that a machine whose load changes
    during the run slows all of them alike."""
    torch.manual_seed(0)
    for step in steps.values():
        for _ in range(warmup):
            step()
    per_round, times = max(1, n // rounds), {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[key].append((time.perf_counter() - start) / per_round / key[1] * 1000)
    return {key: statistics.median(t) for key, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="structural-qf-lab")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=1, help="also time a population of this many seeds")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds; the median round is reported")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = resolve(load_preset(args.preset), "cpu")
    print(
        f"{args.preset}: {prepared.model.n_layers} layers, d_model {prepared.model.d_model}, batch "
        f"{prepared.config.train.batch_size}, dropout {prepared.model.dropout}; {torch.get_num_threads()} torch threads"
    )
    dropouts = {
        "groklab Dropout": transformer.Dropout,
        "until 2026-12-02": BoolMaskDropout,
        "torch F.dropout": TorchDropout,
    }
    sizes = [1] + ([args.batch] if args.batch > 1 else [])
    steps = {(name, m): stepper(prepared, cls, m) for m in sizes for name, cls in dropouts.items()}
    ms = ms_per_step(steps, args.steps, args.warmup, args.rounds)
    for m in sizes:
        print("one run, ms/step:" if m == 1 else f"a batch of {m}, ms per member-step:")
        for name in dropouts:
            ratio = "" if name == "groklab Dropout" else f"  (/ groklab: x{ms[name, m] / ms['groklab Dropout', m]:.2f})"
            print(f"  {name + ':':20s} {ms[name, m]:7.1f}{ratio}")
        if m > 1:
            print("  batched speed-up over one run at a time (one run / batched, each dropout): ", end="")
            print(", ".join(f"x{ms[name, 1] / ms[name, m]:.2f}" for name in dropouts))


if __name__ == "__main__":
    main()

"""Training-step time of the structural-grokking lab model with groklab's CPU dropout beside torch's.

The structural-qf-lab preset (6 layers since this session; 4 when measured for the README; d_model 64,
batch 32, dropout 0.1 in five places per block) on CPU: torch's `F.dropout` draws each mask element with
`bernoulli_`, the largest item of this model's step in torch.profiler (39% of self CPU time, profiler
overhead included) on the 2-core machine; `groklab.models.transformer.Dropout` draws 15 bits per
element from 63-bit draws of the same generator. Times --steps training steps with each (same model, data and seed), after
--warmup steps, and prints ms/step and the ratio. Nothing is asserted.

    python benchmarks/lm_step_speed.py [--preset structural-qf-lab] [--steps 200] [--warmup 20] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from groklab.config import load_preset
from groklab.experiment import resolve
from groklab.models import build_model, transformer
from groklab.training.loop import Trainer


class TorchDropout(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)


def ms_per_step(prepared, dropout_cls, steps: int, warmup: int) -> float:
    model = build_model(prepared.model, prepared.config.resolved_model_seed)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, transformer.Dropout):
                setattr(module, name, dropout_cls(child.p))
    trainer = Trainer(prepared.task, model, prepared.config.train, seed=0)
    torch.manual_seed(0)
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="structural-qf-lab")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = resolve(load_preset(args.preset), "cpu")
    print(
        f"{args.preset}: {prepared.model.n_layers} layers, d_model {prepared.model.d_model}, batch "
        f"{prepared.config.train.batch_size}, dropout {prepared.model.dropout}; {torch.get_num_threads()} torch threads"
    )
    groklab_ms = ms_per_step(prepared, transformer.Dropout, args.steps, args.warmup)
    torch_ms = ms_per_step(prepared, TorchDropout, args.steps, args.warmup)
    print(f"{'groklab Dropout:':22s} {groklab_ms:7.1f} ms/step")
    print(f"{'torch F.dropout:':22s} {torch_ms:7.1f} ms/step")
    print(f"ratio (torch / groklab): x{torch_ms / groklab_ms:.2f}")


if __name__ == "__main__":
    main()

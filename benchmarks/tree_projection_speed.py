"""Wall time of tree projections (Murty et al. 2023 §4; spec structural-grokking.md §5.4, "Scale notes").

1,000 question-formation sentences (the declaratives of the first 1,000 training `quest` lines, the measure
set's analysis sample) through the structural-qf-lab preset's model (4 layers, d_model 64, 4 heads of 16,
d_mlp 256, post-LN, sinusoidal, dropout 0.1; untrained: the cost does not depend on the weights). Prints
the wall time of `tree_projection` (span scores, greedy and exact-DP trees, t_scores, PARSEVAL; target on
a 2-core machine: 60 s) beside, measured in the same run on the first `--baseline` sentences and
extrapolated per sentence to all of them:
- one span at a time: a model call per span on the whole sentence with every key outside {SOS} ∪ [i, j]
  blocked, plus one contextual call per sentence (the arithmetic of the released code, unbatched);
- per sentence: the released code's batching, all spans of one sentence in one call (<= 256 per call).
The baseline's span scores are checked against the batched ones. Nothing is asserted.

    python benchmarks/tree_projection_speed.py [--sentences 1000] [--baseline 50] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from groklab.config import load_preset
from groklab.experiment import resolve
from groklab.measures import tree_projection as tp
from groklab.models import build_model


@torch.no_grad()
def unbatched_scores(model, ids, spans_per_call: int):
    """Span scores the released code's way: the whole sentence per span, `spans_per_call` spans per call."""
    model.eval()
    encode, device = tp.transformer_encoder(model), next(model.parameters()).device
    out = []
    for seq in ids:
        x = torch.tensor([seq], device=device)
        n = len(seq) - 1
        h = encode(x, torch.zeros_like(x, dtype=torch.bool))[0, 1:].double()  # (n, d)
        spans = [(i, j) for i in range(n) for j in range(i, n)]
        s = np.full((n, n), np.nan)
        for k in range(0, len(spans), spans_per_call):
            chunk = spans[k : k + spans_per_call]
            mask = torch.ones(len(chunk), n + 1, dtype=torch.bool, device=device)
            mask[:, 0] = False
            for r, (i, j) in enumerate(chunk):
                mask[r, i + 1 : j + 2] = False
            free = encode(x.expand(len(chunk), -1), mask)[:, 1:].double() * (~mask[:, 1:, None])
            for r, (i, j) in enumerate(chunk):
                s[i, j] = float(tp._cosine(h[i : j + 1].sum(0), free[r].sum(0)))
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--baseline", type=int, default=50, help="sentences the baselines run on (extrapolated)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = resolve(load_preset("structural-qf-lab"), args.device)
    model = build_model(prepared.model, prepared.config.resolved_model_seed).to(prepared.device)
    ids, gold = tp.analysis_sample(prepared.task, args.sentences)
    n = np.array([len(s) - 1 for s in ids])
    print(
        f"structural-qf-lab model ({sum(p.numel() for p in model.parameters()):,} parameters, untrained) on "
        f"{prepared.device}, {torch.get_num_threads()} torch threads"
    )
    print(
        f"{len(ids)} QF sentences: {n.min()}-{n.max()} words (mean {n.mean():.2f}), "
        f"{int((n * (n + 1) // 2).sum()):,} spans"
    )

    tp.tree_projection(model, ids[:20], gold[:20])  # warm-up
    start = time.perf_counter()
    row = tp.tree_projection(model, ids, gold)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    scores = tp.span_scores(model, ids)
    spans_only = time.perf_counter() - start
    print(f"{'batched tree_projection:':34s} {batched:8.2f} s  (span scores alone {spans_only:.2f} s; target <= 60 s)")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))

    m = min(args.baseline, len(ids))
    for label, per_call in (("one span at a time", 1), ("per sentence (released batching)", 256)):
        start = time.perf_counter()
        reference = unbatched_scores(model, ids[:m], per_call)
        took = time.perf_counter() - start
        diff = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(reference, scores[:m]))
        estimate = took / m * len(ids)
        print(
            f"{label + ':':34s} {estimate:8.2f} s  extrapolated from {took:.2f} s on the first {m} sentences "
            f"(x{estimate / spans_only:.1f} the batched span scores; max |diff| {diff:.1e})"
        )


if __name__ == "__main__":
    main()

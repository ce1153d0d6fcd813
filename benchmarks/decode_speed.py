"""Wall time of greedy decoding with and without the transformer's KV cache (Murty et al. 2023 §5.1;
spec structural-grokking.md §5.1: the QF and tense metrics decode greedily, at every evaluation).

The structural-qf-lab (or --preset) model, trained for --train-steps steps first so that its decodes end
at EOS at realistic lengths (an untrained model runs every decode to the 50-token limit), decodes the
first --items items of the generalization set: `greedy_decode` with the cache (each column fed once) and
without it (the whole prefix recomputed at every step, as the released code does), same batches. Prints
both times, their ratio, and whether the decodes are identical. Nothing is asserted.

    python benchmarks/decode_speed.py [--preset structural-qf-lab] [--items 500] [--train-steps 500] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from groklab.config import load_preset
from groklab.experiment import resolve
from groklab.models import build_model
from groklab.tasks import lm_eval, mccoy
from groklab.training.loop import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="structural-qf-lab")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = resolve(load_preset(args.preset), args.device)
    task, cfg = prepared.task, prepared.config
    model = build_model(prepared.model, cfg.resolved_model_seed).to(prepared.device)
    start = time.perf_counter()
    trainer = Trainer(task, model, cfg.train, seed=cfg.seed)
    for _ in range(args.train_steps):
        trainer.train_step()
    print(
        f"{args.preset} model ({sum(p.numel() for p in model.parameters()):,} parameters) on {prepared.device}, "
        f"{torch.get_num_threads()} torch threads, trained {args.train_steps} steps in {time.perf_counter() - start:.1f} s"
    )

    kind = {"question_formation": "question", "tense_inflection": "tense"}[task.name]
    items = mccoy.generate(kind, seed=1, n_train=1, n_val=1, n_test=4 * args.items)[2]  # generalization items
    prefixes = [it.source for it in items if it.marker in ("quest", "PRESENT")][: args.items]
    cached = lm_eval.model_logits_fn(model)
    uncached = lambda tokens: cached(tokens)  # noqa: E731  (the same model, no `new_cache`: no KV cache)
    lm_eval.greedy_decode(cached, task.vocab, prefixes[:64])  # warm-up
    times, outs = {}, {}
    for label, fn in (("KV cache", cached), ("no cache (prefix recomputed)", uncached)):
        start = time.perf_counter()
        outs[label] = lm_eval.greedy_decode(fn, task.vocab, prefixes)
        times[label] = time.perf_counter() - start
    lengths = [len(o) for o in outs["KV cache"]]
    print(
        f"{len(prefixes)} generalization items, decodes of {min(lengths)}-{max(lengths)} tokens "
        f"(mean {sum(lengths) / len(lengths):.1f})"
    )
    for label, took in times.items():
        print(f"{label + ':':32s} {took:7.2f} s")
    print(
        f"ratio (no cache / KV cache): x{times['no cache (prefix recomputed)'] / times['KV cache']:.2f}; "
        f"identical decodes: {outs['KV cache'] == outs['no cache (prefix recomputed)']}"
    )


if __name__ == "__main__":
    main()

"""Measures of language models from "Grokking of Hierarchical Structure in Vanilla Transformers" (Murty et al.
2023, Fig. 3b): weight norm and attention sparsity. Spec: structural-grokking.md §5.2, §5.3 and
decisions §6 #6, #7, #8. The model is groklab's Transformer (or any module with `blocks` and, for attention,
TransformerLens-style `run_with_cache` and `blocks.{i}.attn.hook_pattern` hook points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _n_layers(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    n = getattr(cfg, "n_layers", None) or (len(model.blocks) if hasattr(model, "blocks") else None)
    if not n:
        raise ValueError("cannot tell the model's number of layers (no cfg.n_layers, no blocks); pass n_layers=")
    return int(n)


@torch.no_grad()
def weight_norm(model: torch.nn.Module, n_layers: int | None = None) -> dict[str, float]:
    """{"weight_norm": ‖θ‖ = sqrt(Σ_params ‖p‖²), "weight_norm_per_layer": ‖θ‖ / n_layers}.

    Murty et al. 2023 Fig. 3b (spec §5.2): every parameter counts (embeddings, unembedding, LayerNorm gains and
    biases, biases), buffers do not (e.g. the sinusoidal positions); a tied parameter counts once. The paper
    plots ‖θ‖/L and the released code divides only at plot time; groklab logs both (§6 #8). Summed in float64.
    """
    total = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    norm = math.sqrt(total)
    return {"weight_norm": norm, "weight_norm_per_layer": norm / (n_layers or _n_layers(model))}


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-Σ_k p_k log p_k over the last axis (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


@torch.no_grad()
def attention_entropy(
    model: torch.nn.Module, tokens: torch.Tensor, lengths: torch.Tensor | Sequence[int], batch_size: int = 256
) -> dict[str, float]:
    """Entropy of the attention distributions of the real forward pass (Murty et al. 2023, Fig. 3b, "attention
    sparsity": the negative mean entropy of all attention distributions; spec §5.3, §6 #6, #7).

    tokens (batch, pos): right-padded sequences ([SOS] w1..wn, e.g. `lm_eval.pad_batch`); lengths (batch,):
    the real tokens of each row, SOS included. The patterns are those the model computes
    (`blocks.{i}.attn.hook_pattern`, (batch, head, query, key), causal mask applied), recorded with
    `run_with_cache` in eval mode (no dropout; the model's mode is restored after). A query k of a sentence
    attends to keys 0..k; queries at pad positions (k >= length) are left out, and pads are never keys of a
    real query (they lie to its right, behind the causal mask), so padding does not change any value.

    Returns
    - "attention_entropy": mean over (sentences, layers, heads, real query positions) of the entropy
      H(a) = -Σ_j a_j log a_j (nats) of each head's distribution: one flat mean over all of them (§6 #7);
    - "attention_sparsity": its negation, the quantity the paper plots;
    - "attention_entropy_legacy": the released code's aggregation on the real patterns: per layer the
      head-mean distribution, its entropy summed over a sentence's query positions, averaged over layers,
      then over sentences: (1/|D|) Σ_S (1/L) Σ_layers Σ_{k∈S} H(mean_h a_k). (The released code computed
      every layer's attention from the embeddings, §5.3 ⚠; that bug is not reproduced, §6 #6.)
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"need tokens (batch, pos) and lengths (batch,), got {tuple(tokens.shape)} and {tuple(lengths.shape)}"
        )
    if len(lengths) == 0 or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
        raise ValueError(f"lengths must be in 1..{tokens.shape[1]} and the batch non-empty")
    n_layers = _n_layers(model)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    device = next(model.parameters()).device
    total, count, legacy = 0.0, 0, 0.0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(tokens), batch_size):
            length = lengths[start : start + batch_size].to(device)  # (batch,)
            width = int(length.max())  # trailing pad columns change nothing (causal): drop them
            _, cache = model.run_with_cache(tokens[start : start + batch_size, :width].to(device), names=names)
            real = (torch.arange(width, device=device) < length[:, None]).double()  # (batch, query) real queries
            per_sentence = torch.zeros(len(length), dtype=torch.float64, device=device)
            for name in names:
                pattern = cache[name].double()  # (batch, head, query, key)
                h = _entropy(pattern)  # (batch, head, query)
                total += float((h * real[:, None]).sum())
                count += int(real.sum()) * pattern.shape[1]
                per_sentence += (_entropy(pattern.mean(1)) * real).sum(-1)  # (batch,) head-mean, summed over queries
            legacy += float((per_sentence / n_layers).sum())
    finally:
        model.train(was_training)
    entropy = total / count
    return {
        "attention_entropy": entropy,
        "attention_sparsity": -entropy,
        "attention_entropy_legacy": legacy / len(tokens),
    }

"""Training losses beside softmax cross-entropy.

StableMax (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability", ICLR 2025, §4 eq. 5-6, as
in the released `stablemax_cross_entropy`): s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0 replaces
exp; StableMax(x)_i = s(x_i) / sum_j s(x_j), computed in float64. Its probabilities approach 1 only
polynomially in the logits, so the loss cannot round to exactly zero (softmax collapse) the way a
float32 softmax cross-entropy does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x): x + 1 for x >= 0, 1 / (1 - x) for x < 0 (each branch evaluated on its own side only, so no
    infinite branch leaks a NaN into the gradient)."""
    return torch.where(x >= 0, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(logits.double())
    return torch.log(s) - torch.log(s.sum(dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean of -log StableMax(logits)[label] over the examples (`ignore_index` labels skipped), float64.
    logits (n, classes), labels (n,)."""
    return F.nll_loss(log_stablemax(logits), labels, ignore_index=ignore_index)

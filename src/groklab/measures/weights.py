"""Statistics of a model's weights (no activations needed)."""

from __future__ import annotations

import torch


@torch.no_grad()
def weight_norms(model: torch.nn.Module) -> dict:
    """Sum of squared weights: `sum_sq_weights` over every parameter (buffers excluded) and
    `sum_sq_<name>` per tensor (Nanda et al. 2023, §5.1 "total sum of squared weights")."""
    row = {"sum_sq_weights": 0.0}
    for name, param in model.named_parameters():
        value = float(param.detach().double().pow(2).sum())
        row[f"sum_sq_{name}"] = value
        row["sum_sq_weights"] += value
    return row

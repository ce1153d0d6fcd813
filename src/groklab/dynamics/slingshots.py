"""Slingshots: bursts of growth of the last layer's weight norm (Thilak et al. 2022, "The Slingshot
Mechanism: An Empirical Study of Adaptive Optimizers and the Grokking Phenomenon", arXiv 2206.04817, §3,
Figs. 1-3).

With an adaptive optimizer and little or no weight decay, the norm of the last layer's weights does not
grow smoothly: it climbs in cycles — a short, sharp rise that comes with a spike of the training loss,
then a plateau (or a slow decay under weight decay) — and generalization tends to arrive at such a
rise. `detect_slingshots` finds the rises on the metrics table's norm column:

- r_t = Δ log(norm) per step between consecutive evaluations; "typical" growth is the median of |r_t|;
- a burst is a maximal run of intervals with r_t > `sharpness` × typical; it is a slingshot when the
  norm rises by at least `min_rise` (relative) over it, at least PLATEAU slower intervals come before it
  and one after it (a cycle: not the run's first transient from its initialization, nor growth still
  going on at the end), and, with a training-loss column, the loss spikes during it (its largest value
  in the burst above the value just before: the paper's signature; `loss_spike` is that ratio).
The thresholds are this module's choice (the paper identifies slingshots by eye); the test on synthetic
staircases and smooth curves pins what they accept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SHARPNESS = 5.0  # a burst grows this many times faster than the median growth rate
MIN_RISE = 0.05  # ... and raises the norm by at least 5%
PLATEAU = 3  # evaluations of slower growth before a burst


def last_layer_column(columns: Sequence[str]) -> str | None:
    """The metrics column with the last layer's sum of squared weights (measure set "weights"): the
    transformer's unembedding, else the last weight matrix in parameter order; None without one."""
    if "sum_sq_unembed.W_U" in columns:
        return "sum_sq_unembed.W_U"
    weights = [c for c in columns if c.startswith("sum_sq_") and c.endswith("weight")]
    return weights[-1] if weights else None


def detect_slingshots(
    steps: Sequence[float],
    norm: Sequence[float],
    loss: Sequence[float] | None = None,
    sharpness: float = SHARPNESS,
    min_rise: float = MIN_RISE,
) -> list[dict]:
    """Each slingshot: {start, end (steps), rise (relative growth of the norm over the burst), loss_spike
    (max training loss in the burst / the loss before it; NaN without a loss)}."""
    steps, norm = np.asarray(steps, dtype=float), np.asarray(norm, dtype=float)
    ok = np.isfinite(norm) & (norm > 0)
    steps, norm = steps[ok], norm[ok]
    loss = None if loss is None else np.asarray(loss, dtype=float)[ok]
    if len(norm) < 3:
        return []
    rate = np.diff(np.log(norm)) / np.maximum(np.diff(steps), 1e-12)  # (T-1,) per step
    typical = float(np.median(np.abs(rate)))
    burst = rate > max(sharpness * typical, 1e-12)
    found, i = [], 0
    while i < len(burst):
        if not burst[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(burst) and burst[j + 1]:
            j += 1
        rise = float(norm[j + 1] / norm[i] - 1)
        spike = float(np.nanmax(loss[i : j + 2]) / loss[i]) if loss is not None and loss[i] > 0 else float("nan")
        if rise >= min_rise and i >= PLATEAU and j + 1 < len(burst) and (loss is None or spike > 1):
            found.append({"start": int(steps[i]), "end": int(steps[j + 1]), "rise": rise, "loss_spike": spike})
        i = j + 1
    return found


def slingshot_summary(metrics: pd.DataFrame) -> dict:
    """`slingshots` (how many) and `slingshot_steps` (their starts) on the last layer's norm, where the
    metrics have it; {} otherwise."""
    column = last_layer_column(list(metrics.columns))
    if column is None or metrics[column].notna().sum() < 3:
        return {}
    rows = metrics[["step", column, *(["train_loss"] if "train_loss" in metrics else [])]].dropna(subset=[column])
    found = detect_slingshots(rows["step"], np.sqrt(rows[column]), rows.get("train_loss", None))
    return {"slingshots": len(found), "slingshot_steps": [s["start"] for s in found], "slingshot_column": column}

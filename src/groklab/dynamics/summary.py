"""Headline figures of a run from its metrics table alone (no torch)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from groklab.dynamics.slingshots import slingshot_summary

GROK_THRESHOLD = 0.99
STRUCTURAL_MEASURES = (
    "t_score",
    "t_score_per_word",
    "parseval",
    "weight_norm",
    "weight_norm_per_layer",
    "attention_entropy",
)
STABILITY_MEASURES = ("softmax_collapse", "zero_terms", "softmax_collapse_f64", "zero_terms_f64")


def first_step(metrics: pd.DataFrame, column: str, threshold: float = GROK_THRESHOLD) -> int | None:
    """The first evaluation step at which `column` >= threshold, or None."""
    if column not in metrics or metrics.empty:
        return None
    hit = metrics.loc[metrics[column] >= threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def summarize(metrics: pd.DataFrame, threshold: float = GROK_THRESHOLD) -> dict:
    """Grokked? (test accuracy reached `threshold`), the first steps at which train and test accuracy
    reached it, the delay between them, final values, the last step with finite losses, wall time."""
    if metrics.empty:
        return {"evaluations": 0}
    last = metrics.iloc[-1]
    train_step, test_step = first_step(metrics, "train_acc", threshold), first_step(metrics, "test_acc", threshold)
    test_95 = first_step(metrics, "test_acc", 0.95)
    losses = metrics[[c for c in metrics.columns if c.endswith("_loss")]].to_numpy(dtype=float)
    finite = metrics.loc[np.isfinite(losses).all(axis=1), "step"]
    elapsed = float(last.get("elapsed_s", math.nan))
    at = lambda step, col: None if step is None else float(metrics.loc[metrics["step"] == step, col].iloc[0])  # noqa: E731
    out = {
        "evaluations": len(metrics),
        "last_step": int(last["step"]),
        "grokked": test_step is not None,
        "threshold": threshold,
        "step_train_acc_99": train_step,
        "step_test_acc_99": test_step,
        "grok_delay_steps": None if None in (train_step, test_step) else test_step - train_step,
        "elapsed_s_test_acc_99": at(test_step, "elapsed_s") if "elapsed_s" in metrics else None,
        "step_test_acc_95": test_95,  # Grokfast's threshold (Lee et al. 2024)
        "elapsed_s_test_acc_95": at(test_95, "elapsed_s") if "elapsed_s" in metrics else None,
        "last_good_step": int(finite.iloc[-1]) if len(finite) else None,
        "elapsed_s": elapsed,
        "steps_per_s": round(last["step"] / elapsed, 2) if elapsed > 0 else None,
    }
    for col in (
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "n_key_freqs",
        "frac_neurons_explained",
        "fourier_mult_fve",
        "key_freqs",
    ):
        if col in metrics and pd.notna(last.get(col)):
            out[f"final_{col}"] = last[col] if col == "key_freqs" else float(last[col])
    for col in STRUCTURAL_MEASURES + STABILITY_MEASURES:  # measured at their own steps: the last value measured
        if col in metrics and metrics[col].notna().any():
            out[f"final_{col}"] = float(metrics[col].dropna().iloc[-1])
    out.update(_heldout_summary(metrics))
    out.update(slingshot_summary(metrics))
    return out


def _heldout_summary(metrics: pd.DataFrame) -> dict:
    """For the task metrics of in-distribution (id_*) and generalization (gen_*) sets (structural
    grokking, Murty et al. 2023): final and best values; and, for each gen_X with an id_X, its value at
    the first evaluation where id_X peaks (early stopping on in-distribution accuracy) and the first
    step at which it reaches 0.8."""
    out = {}
    for col in [c for c in metrics.columns if c.startswith(("id_", "gen_"))]:
        values = metrics[col].dropna()
        if values.empty:
            continue
        out[f"final_{col}"] = float(values.iloc[-1])
        if not col.endswith("_loss"):
            out[f"max_{col}"] = float(values.max())
        partner = "id_" + col[len("gen_") :]
        if col.startswith("gen_") and partner in metrics and metrics[partner].notna().any():
            peak = metrics[partner].idxmax()
            out[f"early_stop_{col}"] = float(metrics.loc[peak, col])
            out[f"early_stop_step_{col}"] = int(metrics.loc[peak, "step"])
            out[f"step_{col}_80"] = first_step(metrics, col, 0.8)
    return out


def is_structural(metrics_or_summary) -> bool:
    """Does this run score in-distribution and generalization sets (id_* / gen_* columns), as the
    structural-grokking LMs do? Their headline is `structural_headline`, not test accuracy >= 99% and
    the three phases of modular arithmetic (which their token-level test accuracy cannot show)."""
    keys = metrics_or_summary.columns if isinstance(metrics_or_summary, pd.DataFrame) else metrics_or_summary
    return any(str(k).startswith(("gen_", "max_gen_")) for k in keys)


def structural_headline(summary: dict) -> list[tuple[str, str]]:
    """(label, text) lines for each gen_X metric with an id_X partner, from a `summarize` dict: the
    in-distribution value (final, best), the generalization value (final, best, first step >= 0.8) and
    the early-stopping comparison (gen_X where id_X first peaks vs at the end)."""
    lines = []
    for key in [k for k in summary if k.startswith("early_stop_gen_")]:
        metric = key[len("early_stop_gen_") :]
        gen, id_ = f"gen_{metric}", f"id_{metric}"
        cross = summary.get(f"step_{gen}_80")
        lines += [
            (id_, f"final {summary.get(f'final_{id_}', math.nan):.3f}, best {summary.get(f'max_{id_}', math.nan):.3f}"),
            (
                gen,
                f"final {summary.get(f'final_{gen}', math.nan):.3f}, best {summary.get(f'max_{gen}', math.nan):.3f}, "
                + (f"reaches 0.8 at step {cross}" if cross is not None else "never reaches 0.8"),
            ),
            (
                "early stopping",
                f"{gen} {summary[key]:.3f} where {id_} first peaks (step "
                f"{summary[f'early_stop_step_{gen}']}) vs {summary.get(f'final_{gen}', math.nan):.3f} at the end",
            ),
        ]
    return lines


def check_outcome(summary: dict, outcome: dict) -> list[str]:
    """The preset's expected outcome against a run's summary: one message per unmet expectation."""
    failures = []
    for key, want in outcome.items():
        got = summary.get(key)
        if isinstance(want, bool):
            ok = got is want
        else:
            lo, hi = want
            ok = got is not None and lo <= got <= hi
        if not ok:
            failures.append(f"{key} = {got}, expected {want}")
    return failures

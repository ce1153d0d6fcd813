"""Phase detection on synthetic metric tables with planted boundaries, and on runs that never grok."""

import numpy as np
import pandas as pd
import pytest

from groklab.dynamics import check_outcome, detect_phases, phase_evidence, summarize


def log_interp(step, points):
    """Piecewise log-linear curve through (step, value) points."""
    xs, ys = zip(*points)
    return 10 ** np.interp(step, xs, np.log10(ys))


def synthetic(mem=1400, circ=9400, clean=14000, end=20000, every=100, grok=True, seed=0):
    """A run shaped like Nanda et al.'s Fig. 7 with boundaries planted at mem / circ / clean."""
    rng = np.random.default_rng(seed)
    step = np.arange(0, end + 1, every)
    noise = lambda: 10 ** rng.normal(0, 0.02, len(step))  # noqa: E731
    train_loss = log_interp(step, [(0, 4.7), (mem, 3e-7), (circ, 2e-7), (clean, 1e-7), (end, 1e-7)]) * noise()
    if grok:
        test_loss = log_interp(step, [(0, 4.7), (mem, 30), (circ, 20), (circ + 300, 1.5), (clean, 1e-6), (end, 8e-7)])
        gini = np.interp(step, [0, mem, circ, clean, end], [0.03, 0.1, 0.25, 0.75, 0.78])
        excluded = log_interp(step, [(0, 4.7), (mem, 1e-6), (circ, 15), (clean, 12), (end, 12)])
        restricted = log_interp(step, [(0, 4.7), (mem, 4), (circ - 2000, 0.05), (circ, 1e-3), (end, 1e-8)])
    else:
        test_loss = log_interp(step, [(0, 4.7), (mem, 30), (end, 25)])
        gini = np.interp(step, [0, mem, end], [0.03, 0.1, 0.15])
        excluded = np.full(len(step), 1e-6)
        restricted = np.full(len(step), 4.0)
    test_loss = test_loss * noise()
    test_acc = np.exp(-test_loss)  # ~1 once the test loss is tiny
    return pd.DataFrame(
        {
            "step": step,
            "train_loss": train_loss,
            "train_acc": np.where(step >= 300, 1.0, 0.5),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "gini_W_E": gini,
            "gini_W_L": gini,
            "excluded_loss": excluded,
            "restricted_loss": restricted,
            "sum_sq_weights": np.interp(step, [0, circ, clean, end], [3000, 2500, 900, 880]),
        }
    )


@pytest.mark.parametrize("planted", [(1400, 9400, 14000), (800, 4000, 6000), (2000, 15000, 22000)])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_boundaries_are_found(planted, seed):
    mem, circ, clean = planted
    metrics = synthetic(mem, circ, clean, end=clean + 6000, seed=seed)
    phases = detect_phases(metrics)
    assert phases["phase_note"] == ""
    assert abs(phases["memorization_end"] - mem) <= 0.15 * mem
    assert circ <= phases["circuit_formation_end"] <= circ + 400  # where the test loss starts to collapse
    assert abs(phases["cleanup_end"] - clean) <= 0.1 * clean
    assert phases["memorization_end"] < phases["circuit_formation_end"] < phases["cleanup_end"]
    evidence = phase_evidence(metrics, phases)
    assert evidence["gini_W_L_speedup"] > 1.5 and evidence["restricted_lead_steps"] > 0
    assert evidence["excluded_over_train"] > 10


def test_a_run_that_never_groks_invents_no_boundaries():
    phases = detect_phases(synthetic(grok=False))
    assert abs(phases["memorization_end"] - 1400) <= 200
    assert phases["circuit_formation_end"] is None and phases["cleanup_end"] is None
    assert "no circuit formation" in phases["phase_note"] and "no grokking" in phases["phase_note"]
    assert phase_evidence(synthetic(grok=False), phases) == {}


def test_a_run_stopped_mid_cleanup_has_no_cleanup_end():
    metrics = synthetic(end=20000)
    phases = detect_phases(metrics[metrics["step"] <= 11000])
    assert phases["circuit_formation_end"] is not None and phases["cleanup_end"] is None
    assert "still collapsing" in phases["phase_note"]


def test_a_run_that_never_memorizes():
    metrics = synthetic()
    metrics["train_acc"] = 0.4
    phases = detect_phases(metrics)
    assert phases["memorization_end"] is None and "no memorization" in phases["phase_note"]


def test_tables_without_the_columns_give_nothing():
    assert detect_phases(pd.DataFrame()) == {}
    assert detect_phases(pd.DataFrame({"step": [0, 1], "train_loss": [1.0, 0.5]})) == {}


def test_summary_and_outcome_checks():
    metrics = synthetic()
    summary = summarize(metrics)
    assert summary["grokked"] and summary["step_train_acc_99"] == 300
    assert check_outcome(summary, {"grokked": True, "step_train_acc_99": (0, 500)}) == []
    failures = check_outcome(summary, {"grokked": False, "step_test_acc_99": (0, 10)})
    assert len(failures) == 2 and "grokked" in failures[0]

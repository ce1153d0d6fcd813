"""Stages for every run (dynamics.detect_stages), on planted metric tables: a grokking run whose structure
and LLC move first and whose weight norm falls after, a structural LM read from its gen_* / id_* columns,
and runs that never generalize or never fit (no invented boundaries)."""

import numpy as np
import pandas as pd

from groklab.dynamics import detect_stages


def sigmoid(steps, at, width=50.0):
    return 1 / (1 + np.exp(-(steps - at) / width))


def planted(generalize_at=3000, **extra) -> pd.DataFrame:
    steps = np.arange(0, 5000, 100)
    table = {
        "step": steps,
        "train_acc": np.minimum(1.0, steps / 1000),
        "train_loss": 1.0,
        "test_acc": 0.05 + 0.95 * sigmoid(steps, generalize_at),
        "test_loss": 1.0,
        "structure": 0.1 + 0.8 * sigmoid(steps, 2200, 100),
        "llc": 40 - 30 * sigmoid(steps, 2500, 100),
        "weight_norm": 50 - 30 * sigmoid(steps, 3500, 100),
    }
    table.update(extra)
    return pd.DataFrame(table)


def test_a_grokking_run_has_every_stage_in_order():
    stages = detect_stages(planted())
    assert stages["memorized_step"] == 1000  # train acc first reaches 0.99 * max
    assert stages["generalized_step"] == 3000  # halfway from 0.05 to 1.0
    assert 1800 <= stages["structure_onset_step"] < stages["llc_onset_step"] < stages["generalized_step"]
    assert stages["cleanup_end_step"] > 3500 and 0.5 < stages["norm_drop"] < 0.65
    assert 0 < stages["llc_lead"] < stages["structure_lead"] < 1 and stages["stages_note"] == ""


def test_a_run_that_never_generalizes_gets_no_generalization_and_no_cleanup():
    stages = detect_stages(planted(test_acc=np.full(50, 0.1), structure=np.full(50, 0.2)))
    assert stages["memorized_step"] == 1000
    assert stages["generalized_step"] is None and stages["cleanup_end_step"] is None
    assert stages["structure_onset_step"] is None  # a flat measure has no onset
    assert "no generalization" in stages["stages_note"]


def test_a_run_that_never_fits_says_so():
    stages = detect_stages(planted(train_acc=np.full(50, 0.3), test_acc=np.full(50, 0.3)))
    assert stages["memorized_step"] is None and stages["generalized_step"] is None
    assert "never fit the training data" in stages["stages_note"]


def test_a_structural_lm_is_read_from_its_task_metrics():
    """A structural LM: the held-out metric is gen_first_word_acc (not token-level test acc), its train
    metric the in-distribution twin, its structure the t-score; generalization without a norm fall."""
    steps = np.arange(0, 5000, 100)
    table = pd.DataFrame(
        {
            "step": steps,
            "train_acc": 0.9,
            "test_acc": 0.9,  # token-level: saturated throughout
            "id_first_word_acc": np.minimum(1.0, steps / 800),
            "gen_acc": 0.5,
            "id_aux_rank_acc": 1.0,
            "gen_aux_rank_acc": 0.3,  # sorts first; the paper's metric is first word
            "gen_first_word_acc": 0.2 + 0.7 * sigmoid(steps, 4000),
            "t_score": 1 + 3 * sigmoid(steps, 3000),
            "weight_norm": 30 + steps / 1000,
        }
    )
    stages = detect_stages(table)
    assert (
        stages["stages_columns"]
        == "held_out=gen_first_word_acc,train=id_first_word_acc,structure=t_score,norm=weight_norm"
    )
    assert stages["memorized_step"] == 800 and stages["generalized_step"] == 4000
    assert stages["structure_onset_step"] < stages["generalized_step"] and stages["cleanup_end_step"] is None
    assert "no cleanup" in stages["stages_note"]


def test_reports_shade_the_stages_of_a_run_without_modular_phases():
    from groklab.report.figures import phase_bands

    lm = {"memorization_end": None, "memorized_step": 800, "generalized_step": 4000, "cleanup_end_step": None}
    assert phase_bands(lm) == [(0, 800, "memorization"), (800, 4000, "until generalization")]
    modular = {"memorization_end": 1400, "circuit_formation_end": 9400, "cleanup_end": 14000, "memorized_step": 1200}
    assert [band[2] for band in phase_bands(modular)] == ["memorization", "circuit formation", "cleanup"]

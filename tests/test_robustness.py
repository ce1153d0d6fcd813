"""How robust a training map is (dynamics/robustness.py): states matched across fits, and model selection
and the detour test repeated over restart seeds and resampled runs, on planted runs with a real detour."""

import numpy as np
import pandas as pd
import pytest

from groklab.dynamics import TrainingMap, convergence_times, map_robustness
from groklab.dynamics.robustness import FIT_STRIDE, match_states

MEANS = np.array([[0.0, 0.0, 0.0], [4.0, -3.0, 1.0], [-3.0, 4.0, 3.0], [6.0, 3.0, -3.0]])  # start, detour, -, end


def planted_runs(n_runs=16, seed=0):
    """Every run goes start -> end in the features l1, l2, var_w; every other run detours through state 1 on
    the way and converges (test_acc 1 from the end state on) 25 checkpoints later."""
    rng = np.random.default_rng(seed)
    runs = {}
    for run in range(n_runs):
        detour = run % 2 == 0
        path = [0] * int(rng.integers(10, 20)) + [1] * (25 if detour else 0)
        path += [3] * (80 - len(path))
        states = np.array(path)
        table = pd.DataFrame(MEANS[states] + rng.normal(0, 0.5, (80, 3)), columns=["l1", "l2", "var_w"])
        table.insert(0, "step", np.arange(80))
        table["test_acc"] = (states == 3).astype(float)
        runs[run] = table
    return runs


def test_states_are_matched_by_their_means():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(5, 3))
    order = [3, 0, 4, 1, 2]
    assert match_states(means, means[order] + 0.01) == {0: 1, 1: 3, 2: 4, 3: 0, 4: 2}
    assert match_states(means, means[[4, 1]]) == {1: 1, 4: 0}  # fewer states: the closest pairs, the rest unmatched


@pytest.mark.parametrize("bootstrap", [False, True])
def test_a_planted_detour_is_found_in_every_refit(bootstrap):
    runs = planted_runs()
    reference = TrainingMap(features="modular_best", n_states=3, n_restarts=2, zscore="global").fit(runs)
    convergence = convergence_times(runs, "test_acc", 0.9)
    result = map_robustness(runs, convergence, reference, n_fits=3, bootstrap=bootstrap)
    fits, states, summary = result.fits, result.states, result.summary
    assert list(fits["fit"]) == [0, 1, 2, 3] and list(fits["random_state"]) == [
        0,
        FIT_STRIDE,
        2 * FIT_STRIDE,
        3 * FIT_STRIDE,
    ]
    assert list(fits["bootstrap"]) == [False] + [bootstrap] * 3 and (fits["n_states"] == 3).all()
    detour = int(reference.means_original_["l2"].idxmin())  # the planted detour: lowest l2
    assert (fits["n_detours_raw"] >= 1).all() and (fits["r"] > 0.5).all()
    row = summary.set_index("reference_state").loc[detour]
    assert row["matched"] == 1 and row["detour_raw"] == 1 and row["r_median"] > 0.5 and row["p_median"] < 0.01
    others = summary[summary["reference_state"] != detour]
    assert (others["detour_raw"] == 0).all()
    assert len(states) == 4 * 3 and set(states["reference_state"]) == {0, 1, 2}


def test_selection_by_the_mean_over_restarts():
    runs = planted_runs(8)
    best = TrainingMap(features="modular_best", n_restarts=3, max_states=4).fit(runs).selection_
    mean = TrainingMap(features="modular_best", n_restarts=3, max_states=4, selection="mean").fit(runs).selection_
    n_eval = 2 * 80  # the held-out runs' rows
    np.testing.assert_allclose(best["bic"], -2 * best["test_ll_best"] + best["n_params"] * np.log(n_eval))
    np.testing.assert_allclose(mean["bic"], -2 * mean["test_ll_mean"] + mean["n_params"] * np.log(n_eval))
    with pytest.raises(ValueError, match="selection must be"):
        TrainingMap(selection="median").fit(runs)

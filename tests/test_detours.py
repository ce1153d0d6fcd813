"""Convergence times, detour tests, transitions and transition features (Hu et al. 2023 §4-5;
spec/training-maps.md §5 and §6 #1, #2, #12, #15)."""

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from groklab.dynamics.detours import (
    censored_median,
    convergence_times,
    detour_test,
    filtered_log_posterior,
    filtered_posterior_gradient,
    occupancy_over_time,
    state_occupancy,
    training_map_graph,
    transition_features,
    transition_table,
    visited,
)
from groklab.dynamics.hmm import TrainingMap


def test_convergence_times_censor_runs_that_never_cross():
    runs = {
        0: pd.DataFrame({"step": [30, 0, 10, 20], "test_acc": [0.95, 0.1, 0.5, 0.9], "test_loss": [0.1, 3, 2, 1]}),
        1: pd.DataFrame({"step": [0, 10, 20], "test_acc": [0.1, np.nan, 0.2], "test_loss": [3, 2, 1.5]}),
    }
    times = convergence_times(runs, threshold=0.9)
    assert times.to_dict("records") == [
        {"seed": 0, "converged": True, "index": 2, "step": 20, "censored": False},  # sorted by step; >=
        {"seed": 1, "converged": False, "index": 3, "step": 20, "censored": True},  # never: index = n rows
    ]
    assert convergence_times(runs, threshold=0.9, first_n=2)["censored"].tolist() == [True, True]
    losses = convergence_times(runs, column="test_loss", threshold=1.5)  # a loss crosses downwards
    assert losses["index"].tolist() == [2, 2] and losses["converged"].tolist() == [True, True]


def test_censored_median_is_known_once_the_runs_it_rests_on_converged():
    # converged at 10, 20, 30; two still running at step 40: the median, 30, cannot move any more
    assert censored_median([10, 40, 20, 40, 30], [False, True, False, True, False]) == (30.0, True)
    # one converged at 10, the others only reached 20: at least 20, not known
    assert censored_median([10, 20, 20], [False, True, True]) == (20.0, False)
    # a censored run tied with the middle converged one could still end later: the median may move up
    assert censored_median([10, 30, 30], [False, False, True]) == (30.0, True)
    assert censored_median([10, 30, 30], [False, True, False]) == (30.0, True)
    assert censored_median([10, 20, 30, 40], [False, False, True, True]) == (25.0, False)  # needs the third
    assert censored_median([10, 20, 30, 40], [False, False, False, True]) == (25.0, True)
    median, known = censored_median([np.nan, 5.0], [True, False])  # a run not started yet counts from step 0
    assert (median, known) == (2.5, False)
    assert np.isnan(censored_median([], [])[0])


def planted_paths(n_runs=40, seed=0):
    """Paths over states 0 (start, everyone), 1 (detour: +60 checkpoints to convergence), 2 (neutral:
    visited by half the runs, balanced across detour and non-detour runs), 3 (end, everyone); and
    convergence times."""
    rng = np.random.default_rng(seed)
    paths, times = {}, {}
    for run in range(n_runs):
        detour, neutral = run % 2 == 0, run % 4 < 2
        path = [0] * rng.integers(5, 15) + [1] * (20 if detour else 0) + [2] * (10 if neutral else 0)
        paths[run] = np.array(path + [3] * (60 - len(path)))
        times[run] = 100 + 60 * detour + rng.normal(0, 10)
    convergence = pd.DataFrame({"seed": list(times), "index": list(times.values()), "censored": False})
    convergence.loc[convergence["index"] > 170, "censored"] = True
    return paths, convergence


def test_detour_test_finds_the_planted_detour():
    paths, convergence = planted_paths()
    table = detour_test(paths, convergence).set_index("state")
    assert table.loc[1, "detour"] and table.loc[1, "p_holm"] < 0.05 and table.loc[1, "r"] > 0.8
    assert table.loc[1, "mean_conv_visit"] - table.loc[1, "mean_conv_not"] == pytest.approx(60, abs=10)
    assert not table.loc[2, "detour"] and table.loc[2, "p"] > 0.05
    assert table.loc[[0, 3], "obligatory"].all() and not table.loc[[1, 2], "obligatory"].any()
    assert table.loc[[0, 3], ["r", "t", "p", "p_holm", "coef_time"]].isna().all().all()
    assert (table["n_visit"] + table["n_not"] == 40).all()
    assert table.attrs["n_runs"] == 40 and table.attrs["n_censored"] == (convergence["censored"]).sum()
    # the per-state test is Pearson's, with its two-sided p; Holm over the two tested states
    for state in (1, 2):
        visits = np.array([state in p for p in paths.values()], dtype=float)
        r, p = stats.pearsonr(visits, convergence["index"])
        assert table.loc[state, "r"] == pytest.approx(r) and table.loc[state, "p"] == pytest.approx(p)
    p = table.loc[[1, 2], "p"]
    assert table.loc[1, "p_holm"] == pytest.approx(min(1, 2 * p.min()))
    assert table.loc[2, "p_holm"] == pytest.approx(max(2 * p.min(), p.max()))
    # time in the detour state (always 20 checkpoints) carries the delay: about 60 / 20 per checkpoint
    assert table.loc[1, "coef_time"] == pytest.approx(3, abs=0.5) and table.loc[1, "p_time"] < 0.05
    assert table.loc[2, "p_time"] > 0.05


def test_detour_p_values_are_two_sided_and_in_range():
    paths, convergence = planted_paths()
    table = detour_test(paths, convergence)
    flipped = detour_test(paths, convergence.assign(index=-convergence["index"]))
    np.testing.assert_allclose(flipped["r"], -table["r"])
    np.testing.assert_allclose(flipped["p"], table["p"])  # symmetric under r -> -r
    assert not flipped["detour"].any()  # faster convergence is not a detour
    tested = table["p"].dropna()
    assert ((tested >= 0) & (tested <= 1)).all() and len(tested) == 2


def test_detour_test_can_exclude_censored_runs():
    paths, convergence = planted_paths()
    n_censored = int(convergence["censored"].sum())
    assert n_censored > 0
    table = detour_test(paths, convergence, exclude_censored=True)
    assert table.attrs["n_runs"] == 40 - n_censored and table.attrs["n_censored"] == n_censored
    with pytest.raises(ValueError, match="no convergence time"):
        detour_test(paths, convergence.iloc[1:])


def test_occupancy_visits_and_transition_table():
    paths = {0: np.array([0, 0, 1, 1, 1, 2]), 1: np.array([0, 2, 2, 2]), 7: np.array([0, 0, 0, 1])}
    occupancy = state_occupancy(paths)
    np.testing.assert_allclose(occupancy.loc[0].to_numpy(), [2 / 6, 3 / 6, 1 / 6])
    assert state_occupancy(paths, normalize=False).loc[7].tolist() == [3, 1, 0]
    assert visited(paths).loc[1].tolist() == [True, False, True]
    when = occupancy_over_time(paths)  # runs of 6, 4 and 4 checkpoints
    assert when.shape == (6, 3) and np.allclose(when.sum(axis=1), 1)
    np.testing.assert_allclose(when.loc[0], [1, 0, 0])
    np.testing.assert_allclose(when.loc[1], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(when.loc[3], [0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(when.loc[5], [0, 0, 1])  # only seed 0 still running
    assert occupancy_over_time(paths, n_states=4).shape == (6, 4)
    table = transition_table(paths)
    assert table[["from", "to", "count", "runs"]].values.tolist() == [
        [0, 0, 3, 2],
        [0, 1, 2, 2],
        [0, 2, 1, 1],
        [1, 1, 2, 1],
        [1, 2, 1, 1],
        [2, 2, 2, 1],
    ]
    assert table["prob"].isna().all()


@pytest.fixture(scope="module")
def small_map():
    """A 3-state map fitted on runs that go 0 -> 1 -> 2 in 3 features."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0], [5.0, 1.0, -2.0]])
    runs = {}
    for seed in range(12):
        cuts = np.sort(rng.choice(np.arange(10, 70), 2, replace=False))
        states = np.searchsorted(cuts, np.arange(80), side="right")
        table = pd.DataFrame(means[states] + rng.normal(0, 0.7, (80, 3)), columns=["l1", "l2", "var_w"])
        table.insert(0, "step", np.arange(80))
        table["test_acc"] = states / 2
        runs[seed] = table
    return TrainingMap(features="modular_best", n_states=3, n_restarts=2, covariance_type="full").fit(runs), runs


def test_filtered_posterior_matches_hmmlearn_at_the_last_step(small_map):
    tm, runs = small_map
    z = tm.transform(runs[0])
    log_pi = filtered_log_posterior(tm, z)
    np.testing.assert_allclose(np.exp(log_pi).sum(axis=1), 1)
    # at the last checkpoint the filtered posterior is the smoothed one
    np.testing.assert_allclose(np.exp(log_pi[-1]), tm.model_.predict_proba(z)[-1], atol=1e-9)


def test_transition_gradient_matches_finite_differences(small_map):
    tm, runs = small_map
    z = tm.transform(runs[3])
    gradient = filtered_posterior_gradient(tm, z, j=1)
    eps = 1e-6
    for t in (0, 25, 40, 79):
        for f in range(z.shape[1]):
            up, down = z.copy(), z.copy()
            up[t, f] += eps
            down[t, f] -= eps
            numeric = (filtered_log_posterior(tm, up)[t, 1] - filtered_log_posterior(tm, down)[t, 1]) / (2 * eps)
            assert gradient[t, f] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_transition_features_rank_features_per_transition(small_map):
    tm, runs = small_map
    table = transition_features(tm, runs, 0, 1)
    assert table.attrs["n_occurrences"] == 12  # once per run
    assert table["feature"].tolist() == [
        tm.features_[i]
        for i in np.argsort(
            -np.abs(table.set_index("feature").loc[tm.features_, "mean_gradient"].to_numpy()), kind="stable"
        )
    ]
    assert table["abs_rank"].tolist() == [1, 2, 3]
    shift = table.set_index("feature")["mean_shift"]
    np.testing.assert_allclose(shift[tm.features_].to_numpy(), tm.means_[1] - tm.means_[0])
    assert np.isfinite(table["mean_gradient"]).all()
    with pytest.raises(ValueError, match="never occurs"):
        transition_features(tm, runs, 2, 0)


def test_training_map_graph_keeps_observed_transitions(small_map):
    tm, runs = small_map
    graph = training_map_graph(tm, runs=runs)
    assert isinstance(graph, nx.DiGraph)
    assert set(graph.edges) == {(0, 0), (0, 1), (1, 1), (1, 2), (2, 2)}
    assert graph.edges[0, 1]["prob"] == tm.transmat_[0, 1] and graph.edges[0, 1]["runs"] == 12
    assert sum(graph.nodes[k]["occupancy"] for k in graph) == pytest.approx(1)
    assert [graph.nodes[k]["test_acc"] for k in range(3)] == pytest.approx([0, 0.5, 1], abs=0.02)
    assert all(graph.nodes[k]["n_runs"] == 12 for k in range(3))
    renormalized = training_map_graph(tm, renormalize=True)
    assert sum(renormalized.edges[0, j]["prob"] for j in renormalized.successors(0)) == pytest.approx(1)
    assert "test_acc" not in renormalized.nodes[0]

"""TrainingMap (Hu et al. 2023 HMM training maps, spec/training-maps.md §4) on synthetic runs drawn
from a known 3-state Gaussian HMM."""

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

from groklab.dynamics import hmm as hmm_module
from groklab.dynamics.hmm import FEATURE_SETS, TrainingMap, as_runs, n_free_parameters, prepare_run

FEATURES = ("a", "b", "c", "d")
MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, -3.0, 2.0, 0.0], [8.0, 1.0, -3.0, 4.0]])
TRANSMAT = np.array([[0.96, 0.04, 0.0], [0.0, 0.96, 0.04], [0.0, 0.0, 1.0]])  # left to right


def synthetic_runs(n_runs=30, n_steps=150, seed=0):
    """{seed: table} with columns step, a..d, test_acc, and {seed: true state sequence}."""
    rng = np.random.default_rng(seed)
    runs, truth = {}, {}
    for run in range(n_runs):
        states = np.zeros(n_steps, dtype=int)
        for t in range(1, n_steps):
            states[t] = rng.choice(3, p=TRANSMAT[states[t - 1]])
        x = MEANS[states] + rng.normal(size=(n_steps, len(FEATURES)))
        table = pd.DataFrame(x, columns=list(FEATURES))
        table.insert(0, "step", np.arange(n_steps) * 10)
        table["test_acc"] = states / 2 + rng.uniform(0, 0.05, n_steps)
        runs[run], truth[run] = table, states
    return runs, truth


@pytest.fixture(scope="module")
def data():
    return synthetic_runs()


@pytest.fixture(scope="module")
def fitted(data):
    runs, _ = data
    return TrainingMap(features=FEATURES, max_states=5, n_restarts=2, zscore="global").fit(runs)


def agreement(paths, truth):
    """Fraction of checkpoints whose decoded state equals the true one, under the best relabelling."""
    pred = np.concatenate([paths[s] for s in truth])
    true = np.concatenate([truth[s] for s in truth])
    k = max(pred.max(), true.max()) + 1
    return max((np.asarray(perm)[pred] == true).mean() for perm in itertools.permutations(range(k)))


def test_recovers_states_and_chooses_k_by_bic(fitted, data):
    _, truth = data
    assert fitted.n_states_ == 3
    assert fitted.selection_["bic"].idxmin() == 2
    assert list(fitted.selection_.columns) == [
        "n_states",
        "test_ll_mean",
        "test_ll_std",
        "test_ll_best",
        "aic",
        "bic",
        "n_params",
        "converged",
        "n_failed",
    ]
    assert agreement(fitted.paths_, truth) > 0.95
    assert set(fitted.paths_) == set(truth)  # every run decoded, train and held out
    assert len(fitted.test_runs_) == 6 and len(fitted.train_runs_) == 24
    assert not set(fitted.test_runs_) & set(fitted.train_runs_)
    # raw feature means of the decoded states recover the generating means, in first-visit order
    np.testing.assert_allclose(fitted.means_original_.to_numpy(), MEANS, atol=0.15)


def test_information_criteria_use_fitted_parameter_count(fitted):
    row = fitted.selection_.set_index("n_states").loc[3]
    n_eval = 150 * len(fitted.test_runs_)
    p = 2 + 6 + 12 + 3 * 10  # start, transitions, means, full covariances of 4 features
    assert row["n_params"] == p == n_free_parameters(3, 4, "full")
    assert row["bic"] == pytest.approx(-2 * row["test_ll_best"] + p * np.log(n_eval))
    assert row["aic"] == pytest.approx(-2 * row["test_ll_best"] + 2 * p)
    assert n_free_parameters(3, 4, "diag") == 2 + 6 + 12 + 12


def test_canonical_labels_follow_first_visit(fitted):
    firsts = {k: [np.argmax(p == k) for p in fitted.paths_.values() if (p == k).any()] for k in range(3)}
    means = [np.mean(firsts[k]) for k in range(3)]
    assert means == sorted(means)
    assert sorted(fitted.raw_index_) == [0, 1, 2]
    np.testing.assert_array_equal(fitted.transmat_, fitted.model_.transmat_)
    np.testing.assert_allclose(fitted.transmat_.sum(axis=1), 1)
    assert fitted.transmat_[2, 0] < 0.01 and fitted.transmat_[0, 1] > 0.01  # left to right
    assert fitted.covars_.shape == (3, 4, 4)


def test_predict_and_score_match_fit(fitted, data):
    runs, _ = data
    seed = fitted.test_runs_[0]
    np.testing.assert_array_equal(fitted.predict(runs[seed]), fitted.paths_[seed])
    proba = fitted.predict_proba(runs[seed])
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    held_out = {s: runs[s] for s in fitted.test_runs_}
    assert fitted.score(held_out) == pytest.approx(fitted.selection_.loc[2, "test_ll_best"])


def test_seeded_fits_are_identical(data):
    runs, _ = data
    fits = [TrainingMap(features=FEATURES, max_states=3, n_restarts=2).fit(runs) for _ in range(2)]
    pd.testing.assert_frame_equal(fits[0].selection_, fits[1].selection_)
    assert fits[0].paths_.keys() == fits[1].paths_.keys()
    for seed in fits[0].paths_:
        np.testing.assert_array_equal(fits[0].paths_[seed], fits[1].paths_[seed])


def test_parallel_fits_equal_serial(data):
    runs, _ = data
    some = {s: runs[s] for s in range(12)}
    caught = []
    for n_jobs in (1, 2):  # the workers' warnings are raised again here, as the serial fits raise them
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            caught.append(TrainingMap(features=FEATURES, max_states=3, n_restarts=2, n_jobs=n_jobs).fit(some))
        caught.append(sorted(str(w.message) for w in record))
    serial, serial_warnings, parallel, parallel_warnings = caught
    assert serial_warnings == parallel_warnings
    pd.testing.assert_frame_equal(serial.selection_, parallel.selection_)
    pd.testing.assert_frame_equal(serial.restarts_, parallel.restarts_)
    np.testing.assert_array_equal(serial.means_, parallel.means_)


def test_fast_covariance_statistic_matches_hmmlearn(data):
    """The one-GEMM full-covariance E-step statistic gives hmmlearn's fit to rounding."""
    from hmmlearn.hmm import GaussianHMM

    runs, _ = data
    x = np.concatenate([runs[s][list(FEATURES)].to_numpy() for s in range(10)])
    kwargs = dict(n_components=3, covariance_type="full", n_iter=10, random_state=3)
    ours = hmm_module._new_hmm(3, "full", 1e-3, 3, 10, 1e-2).fit(x, [150] * 10)
    reference = GaussianHMM(**kwargs).fit(x, [150] * 10)
    np.testing.assert_allclose(ours.covars_, reference.covars_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(list(ours.monitor_.history), list(reference.monitor_.history), rtol=1e-12)


def test_per_run_and_global_zscoring(data):
    runs, truth = data
    per_run = TrainingMap(features=FEATURES, n_states=3, n_restarts=2, zscore="per_run").fit(runs)
    glob = TrainingMap(features=FEATURES, n_states=3, n_restarts=2, zscore="global").fit(runs)
    assert per_run.zmean_ is None and per_run.zstd_ is None
    rows = pd.concat([runs[s] for s in glob.train_runs_])[list(FEATURES)]
    np.testing.assert_allclose(glob.zmean_, rows.mean())
    np.testing.assert_allclose(glob.zstd_, rows.std(ddof=0))
    # per-run z-scoring shifts each run's state means with its occupancy: less exact, still recovered
    assert agreement(per_run.paths_, truth) > 0.9
    assert agreement(glob.paths_, truth) > 0.95
    z = per_run.transform(runs[0])
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1)


def test_constant_column_is_dropped_with_a_warning(data):
    runs, _ = data
    runs = {s: t.assign(flat=1.5, sometimes=t["a"] if s else 2.0) for s, t in list(runs.items())[:10]}
    with pytest.warns(UserWarning, match=r"flat.*sometimes|sometimes.*flat"):
        tm = TrainingMap(features=FEATURES + ("flat", "sometimes"), n_states=3, n_restarts=1).fit(runs)
    assert tm.features_ == list(FEATURES) and tm.dropped_features_ == ["flat", "sometimes"]
    assert np.isfinite(tm.means_).all() and np.isfinite(tm.covars_).all()
    # globally, a column constant in one run only is kept
    with pytest.warns(UserWarning, match="flat"):
        tm = TrainingMap(features=FEATURES + ("flat", "sometimes"), n_states=3, n_restarts=1, zscore="global").fit(runs)
    assert tm.features_ == list(FEATURES) + ["sometimes"]


def test_run_with_nan_is_dropped(data):
    runs, _ = data
    runs = {s: t.copy() for s, t in list(runs.items())[:10]}
    runs[3].loc[40, "b"] = np.nan
    runs[7].loc[2, "c"] = np.inf
    with pytest.warns(UserWarning, match=r"seeds \[3, 7\]"):
        tm = TrainingMap(features=FEATURES, n_states=3, n_restarts=1).fit(runs)
    assert tm.dropped_runs_ == [3, 7]
    assert 3 not in tm.paths_ and 7 not in tm.paths_ and len(tm.paths_) == 8
    assert not {3, 7} & set(tm.train_runs_ + tm.test_runs_)
    with pytest.raises(ValueError, match="NaN"):
        tm.predict(runs[3])


def test_save_load_round_trip(fitted, data, tmp_path):
    runs, _ = data
    path = tmp_path / "map.json"
    fitted.save(path)
    loaded = TrainingMap.load(path)
    assert loaded.get_params() == fitted.get_params()
    for seed in (0, fitted.test_runs_[0]):
        np.testing.assert_array_equal(loaded.predict(runs[seed]), fitted.predict(runs[seed]))
    assert loaded.score(runs) == fitted.score(runs)
    pd.testing.assert_frame_equal(loaded.selection_, fitted.selection_)
    pd.testing.assert_frame_equal(loaded.means_original_, fitted.means_original_)
    for name in ("startprob_", "transmat_", "means_", "covars_", "zmean_", "zstd_", "raw_index_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    assert {s: p.tolist() for s, p in loaded.paths_.items()} == {s: p.tolist() for s, p in fitted.paths_.items()}
    assert (loaded.n_states_, loaded.converged_, loaded.features_, loaded.test_runs_) == (
        fitted.n_states_,
        fitted.converged_,
        fitted.features_,
        fitted.test_runs_,
    )
    assert "NaN" not in path.read_text()  # strict JSON


def test_iteration_cap_is_not_convergence(data):
    runs, _ = data
    some = {s: runs[s] for s in range(10)}
    capped = TrainingMap(features=FEATURES, n_states=3, n_restarts=2, n_iter=2).fit(some)
    assert not capped.converged_
    assert not capped.selection_["converged"].any()
    assert (capped.restarts_["n_iter"] == 2).all()
    assert TrainingMap(features=FEATURES, n_states=3, n_restarts=1, n_iter=300).fit(some).converged_


def test_degenerate_restarts_are_retried_then_counted(data, monkeypatch):
    runs, _ = data
    some = {s: runs[s] for s in range(10)}
    original = hmm_module._check_fit

    def fails_below(floor):
        def check(model):
            if model.min_covar < floor:
                raise ValueError("'covars' must be symmetric, positive-definite")
            original(model)

        return check

    monkeypatch.setattr(hmm_module, "_check_fit", fails_below(5e-2))  # attempts 1e-3, 1e-2 fail; 1e-1 works
    tm = TrainingMap(features=FEATURES, n_states=2, n_restarts=2).fit(some)
    assert (tm.restarts_["attempts"] == 3).all() and np.allclose(tm.restarts_["min_covar"], 0.1)
    assert tm.selection_["n_failed"].tolist() == [0]

    monkeypatch.setattr(hmm_module, "_check_fit", fails_below(np.inf))  # every attempt fails
    with pytest.raises(RuntimeError, match="every restart failed"):
        TrainingMap(features=FEATURES, n_states=2, n_restarts=2).fit(some)

    def fails_for_three_states(model):
        if model.n_components == 3:
            raise ValueError("rows of transmat_ must sum to 1")
        original(model)

    monkeypatch.setattr(hmm_module, "_check_fit", fails_for_three_states)
    tm = TrainingMap(features=FEATURES, max_states=3, n_restarts=2).fit(some)
    row = tm.selection_.set_index("n_states").loc[3]
    assert row["n_failed"] == 2 and np.isnan(row["bic"]) and np.isnan(row["test_ll_best"])
    assert tm.n_states_ == 2  # the failed K is not selectable
    assert tm.restarts_.query("n_states == 3")["error"].str.contains("transmat_").all()


def test_feature_sets_and_cnn_aliases():
    assert FEATURE_SETS["base"] == (
        "l1",
        "l2",
        "trace",
        "spectral",
        "code_sparsity",
        "computational_sparsity",
        "mean_lambda",
        "variance_lambda",
        "mean_w",
        "median_w",
        "var_w",
        "mean_b",
        "median_b",
        "var_b",
    )
    assert FEATURE_SETS["parities_best"] == ("spectral", "variance_lambda")
    table = pd.DataFrame({"step": [20, 10, 30], "var_singular_value": [1.0, 2.0, 3.0], "spectral": [0, 1, 2]})
    prepared = prepare_run(table, first_n=2)
    assert list(prepared.columns) == ["step", "variance_lambda", "spectral"]
    assert prepared["step"].tolist() == [10, 20]  # sorted by step, then the first rows
    assert list(as_runs([table, table])) == [0, 1]
    assert list(as_runs({5: table, 2: table})) == [2, 5]


def test_cnn_tables_fit_with_the_named_feature_set():
    rng = np.random.default_rng(1)
    runs = {
        s: pd.DataFrame(
            {
                "step": np.arange(60),
                "spectral": np.r_[rng.normal(0, 1, 30), rng.normal(5, 1, 30)],
                "var_singular_value": np.r_[rng.normal(0, 1, 30), rng.normal(-4, 1, 30)],
            }
        )
        for s in range(8)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tm = TrainingMap(features="parities_best", n_states=2, n_restarts=1, covariance_type="diag").fit(runs)
    assert tm.features_ == ["spectral", "variance_lambda"]
    assert all((np.diff(p) >= 0).all() and p[0] == 0 and p[-1] == 1 for p in tm.paths_.values())


def test_a_covariance_floor_keeps_collinear_features_from_collapsing_a_state(data):
    """A fifth feature that nearly repeats the first (as l2 and var_w within a run): without a floor a full
    covariance fits that direction to the noise (an eigenvalue near 0); with covariance_floor f every state's
    covariance keeps each eigenvalue >= f, and the states are still found."""
    runs, truth = data
    rng = np.random.default_rng(1)
    runs = {s: t.assign(e=t["a"] + rng.normal(scale=1e-3, size=len(t))) for s, t in runs.items()}
    features = (*FEATURES, "e")
    plain = TrainingMap(features=features, n_states=3, n_restarts=2, zscore="global").fit(runs)
    floored = TrainingMap(features=features, n_states=3, n_restarts=2, zscore="global", covariance_floor=0.01)
    floored.fit(runs)
    assert np.linalg.eigvalsh(plain.covars_).min() < 1e-4
    assert np.linalg.eigvalsh(floored.covars_).min() >= 0.01 - 1e-9
    assert agreement(floored.paths_, truth) > 0.95


def test_bad_parameters_raise(data):
    runs, _ = data
    with pytest.raises(ValueError, match="n_states"):
        TrainingMap(n_states="likelihood").fit(runs)
    with pytest.raises(ValueError, match="feature set"):
        TrainingMap(features="nope").fit(runs)
    with pytest.raises(KeyError, match="l1"):
        TrainingMap(features="ablation3").fit(runs)
    with pytest.raises(ValueError, match="covariance_floor"):
        TrainingMap(covariance_floor=-1).fit(runs)
    assert TrainingMap(n_states=3).set_params(n_states=4).get_params()["n_states"] == 4

"""Latent-state training maps: Gaussian HMMs fitted to per-checkpoint weight statistics of many seeds.

Hu, Chen, Saphra, Cho, "Latent State Models of Training Dynamics" (TMLR 2023), §3, as specified in
spec/training-maps.md §4 (data preparation, fitting, model selection) with the decisions of its §6
table. One run = one seed = one table with a row per checkpoint; each run is an independent sequence.

    tm = TrainingMap(features="base").fit({seed: metrics_table, ...})
    tm.n_states_, tm.selection_        # K chosen by held-out BIC, one row per K
    tm.paths_[seed]                    # Viterbi state per checkpoint, canonical labels

Where this differs from the released code (`michahu/modeling-training`, `04_train_hmm/model_selection.py`):
- restarts are seeded (restart i of K gets `random_state + 1000*K + i`) and the run split is a seeded
  permutation of the sorted seeds (§6 #3, #4); the hmmlearn version is recorded;
- AIC/BIC are those of the kept (best held-out log-likelihood) restart, not the mean over restarts
  (`selection="mean"` gives the released code's rule);
- a fit that stops at `n_iter` is flagged as not converged (hmmlearn calls it converged; §6 #13);
- degenerate fits are retried with a larger covariance floor and counted, never returned (§4 caveats);
- constant columns are dropped with a warning instead of producing NaN (§6 #10);
- states are relabelled canonically by mean first-visit time (§6 #14).

hmmlearn (and scikit-learn, which it imports) is imported on first use: it is heavy, and `groklab`
imports this layer at start-up.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from groklab.config import WEIGHT_STATISTICS

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    # Hu et al. 2023 §3 / spec §3.3: 14 weight statistics per checkpoint; loss and accuracy are not features.
    "base": WEIGHT_STATISTICS,
    "ablation": ("l1", "l2", "trace", "variance_lambda", "mean_w", "mean_b"),
    "ablation2": ("l2",),
    "ablation3": ("l1",),
    "modular_best": ("var_w", "l1", "l2"),
    "parities_best": ("spectral", "variance_lambda"),
}

# The CNN tables of the released code name the singular-value columns differently (spec §6 #7).
ALIASES = {"mean_singular_value": "mean_lambda", "var_singular_value": "variance_lambda"}

COVARIANCE_TYPES = ("full", "diag")
MAX_RETRIES = 3  # a degenerate restart is refitted with min_covar x10, x100, x1000
RESTART_STRIDE = 1000  # restart i of K states is seeded random_state + RESTART_STRIDE*K + i

Runs = Mapping[object, pd.DataFrame] | Sequence[pd.DataFrame]


def as_runs(runs: Runs) -> dict:
    """{seed: table} sorted by seed, from a mapping {seed: table} or a sequence (position = seed)."""
    if isinstance(runs, pd.DataFrame):
        raise TypeError("expected several runs: a dict {seed: DataFrame} or a list of DataFrames")
    items = runs.items() if isinstance(runs, Mapping) else enumerate(runs)
    return dict(sorted(items, key=lambda item: item[0]))


def prepare_run(table: pd.DataFrame, first_n: int | None = None) -> pd.DataFrame:
    """One run's table as the HMM sees it (spec §4.1): CNN column aliases renamed, rows sorted by `step`
    (when there is one), the first `first_n` rows kept."""
    renames = {old: new for old, new in ALIASES.items() if old in table and new not in table}
    table = table.rename(columns=renames)
    if "step" in table:
        table = table.sort_values("step", kind="stable")
    table = table.reset_index(drop=True)
    return table if first_n is None else table.head(first_n)


def n_free_parameters(n_states: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a Gaussian HMM, as hmmlearn counts them for `.aic` / `.bic` (spec §4.3):
    start (K-1) + transitions K(K-1) + means K*F + covariances (full K*F(F+1)/2, diag K*F)."""
    covars = {"full": n_states * n_features * (n_features + 1) // 2, "diag": n_states * n_features}
    return (n_states - 1) + n_states * (n_states - 1) + n_states * n_features + covars[covariance_type]


class TrainingMap:
    """A Gaussian-HMM training map over many runs (Hu et al. 2023 §3; spec §4), scikit-learn style.

    Parameters
    ----------
    n_states : int, "bic" or "aic"
        The number of hidden states K, or the criterion that picks K in 1..`max_states`: its minimum
        over the held-out runs (Hu et al. choose K by held-out log-likelihood and BIC).
    features : str or sequence of str
        A name in `FEATURE_SETS` or the feature columns themselves.
    covariance_type : "full" or "diag"
    n_restarts : int
        Seeded restarts per K; the one with the best held-out log-likelihood is kept.
    selection : "best" or "mean"
        Which held-out log-likelihood of each K the criterion (AIC / BIC in selection_) is computed from:
        the kept restart's (groklab's default) or the mean over the restarts (the released code's).
    n_iter, tol : EM iteration cap and convergence threshold (spec §6 #13: 32 and 1e-2).
    max_states : int
        Largest K searched when `n_states` is a criterion.
    zscore : "per_run" or "global"
        "per_run" z-scores each run's columns within the run (population SD), as the paper does;
        "global" uses the mean / SD of the training runs' rows (spec §6 #10, "global_train").
    first_n : int or None
        Keep only the first `first_n` checkpoints of each run.
    test_fraction, split_seed :
        Fraction of runs held out, and the seed of the permutation of the sorted seeds that picks them.
    random_state : int
        Restart i of K states is seeded `random_state + 1000*K + i`.
    min_covar : float
        hmmlearn's floor on the initial covariances; multiplied by 10 (up to 3 times) for a restart
        whose fit is degenerate.
    covariance_floor : float
        Added to the diagonal of every state's covariance after each M-step, in z units (0: off, the
        paper's fit). hmmlearn's min_covar floors only the initial covariances, and its covariance prior
        is divided by a state's row count, so neither stops a full covariance from collapsing onto
        nearly collinear features (the 14 base features within a run); with a floor of f no state is
        narrower than sqrt(f) standard deviations in any direction.
    n_jobs : int
        Processes for the K x restart fits (-1: all cores). Results do not depend on it.

    Learned attributes
    ------------------
    features_, dropped_features_, dropped_runs_, train_runs_, test_runs_, zmean_, zstd_,
    selection_ (one row per K), restarts_ (one row per fit), n_states_, model_ (the hmmlearn model,
    canonical labels), startprob_, transmat_, means_ (z units), covars_ (full matrices, z units),
    means_original_ (raw feature means of the rows decoded to each state), raw_index_,
    converged_, paths_ (seed -> Viterbi states), hmmlearn_version_.
    """

    def __init__(
        self,
        n_states="bic",
        features="base",
        covariance_type="full",
        n_restarts=5,
        n_iter=32,
        tol=1e-2,
        max_states=8,
        zscore="per_run",
        first_n=None,
        test_fraction=0.2,
        split_seed=0,
        random_state=0,
        min_covar=1e-3,
        n_jobs=1,
        selection="best",
        covariance_floor=0.0,
    ):
        self.n_states = n_states
        self.selection = selection
        self.features = features
        self.covariance_type = covariance_type
        self.n_restarts = n_restarts
        self.n_iter = n_iter
        self.tol = tol
        self.max_states = max_states
        self.zscore = zscore
        self.first_n = first_n
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.random_state = random_state
        self.min_covar = min_covar
        self.n_jobs = n_jobs
        self.covariance_floor = covariance_floor

    # -- scikit-learn estimator contract -------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict:
        """The hyper-parameters, by name (scikit-learn's contract; `deep` is accepted and ignored)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params) -> TrainingMap:
        for name, value in params.items():
            if name not in self.get_params():
                raise ValueError(f"unknown parameter {name!r} for TrainingMap")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = TrainingMap().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"TrainingMap({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, runs: Runs) -> TrainingMap:
        """Prepare the runs (spec §4.1), fit every K x restart on the training runs, score each on the
        held-out runs, keep the best restart per K, choose K, relabel the states canonically and decode
        every kept run (train and held-out, as the paper does)."""
        hmmlearn = _hmmlearn()
        self._check_params()
        names = self._feature_names()
        tables = {seed: prepare_run(table, self.first_n) for seed, table in as_runs(runs).items()}
        missing = sorted({f for table in tables.values() for f in names if f not in table})
        if missing:
            raise KeyError(f"feature columns missing from the run tables: {missing}")
        raw = {seed: table[list(names)].to_numpy(dtype=float) for seed, table in tables.items()}

        self.dropped_runs_ = [seed for seed, x in raw.items() if len(x) == 0 or not np.isfinite(x).all()]
        if self.dropped_runs_:
            warnings.warn(
                f"dropped runs with NaN/inf (or no rows) in the features: seeds {self.dropped_runs_}", stacklevel=2
            )
        raw = {seed: x for seed, x in raw.items() if seed not in self.dropped_runs_}
        if not raw:
            raise ValueError("no run left to fit: every run has NaN/inf in the feature columns")
        self.train_runs_, self.test_runs_ = self._split(list(raw))
        keep = self._fit_scaler(raw, names)
        z = {seed: self._scale(x[:, keep]) for seed, x in raw.items()}

        eval_runs = self.test_runs_ or self.train_runs_
        if not self.test_runs_:
            warnings.warn(
                "no held-out runs (test_fraction too small): restarts are scored on the training runs", stacklevel=2
            )
        data = {
            "X": np.concatenate([z[s] for s in self.train_runs_]),
            "lengths": [len(z[s]) for s in self.train_runs_],
            "X_eval": np.concatenate([z[s] for s in eval_runs]),
            "lengths_eval": [len(z[s]) for s in eval_runs],
            "covariance_type": self.covariance_type,
            "min_covar": self.min_covar,
            "covariance_floor": self.covariance_floor,
            "n_iter": self.n_iter,
            "tol": self.tol,
        }
        candidates = (
            [self.n_states] if isinstance(self.n_states, (int, np.integer)) else list(range(1, self.max_states + 1))
        )
        results = _run_restarts(
            data,
            [(k, i, self.random_state + RESTART_STRIDE * k + i) for k in candidates for i in range(self.n_restarts)],
            self.n_jobs,
        )
        self.restarts_ = pd.DataFrame([{key: value for key, value in r.items() if key != "params"} for r in results])
        best = self._select(candidates, results, n_eval=len(data["X_eval"]))

        self.hmmlearn_version_ = hmmlearn.__version__
        self.converged_ = best["converged"]
        model = self._build_model(best["params"])
        raw_paths = [model.predict(x) for x in z.values()]
        self.raw_index_ = _first_visit_order(raw_paths, self.n_states_)
        self.model_ = self._build_model(_permute(best["params"], self.raw_index_))
        self._set_arrays_from_model()
        self.paths_ = {seed: self.model_.predict(x) for seed, x in z.items()}
        self.means_original_ = self._state_means({seed: x[:, keep] for seed, x in raw.items()})
        return self

    def _check_params(self) -> None:
        if isinstance(self.n_states, str):
            if self.n_states not in ("bic", "aic"):
                raise ValueError(f"n_states must be an int or 'bic' / 'aic', got {self.n_states!r}")
        elif not (isinstance(self.n_states, (int, np.integer)) and self.n_states >= 1):
            raise ValueError(f"n_states must be a positive int or 'bic' / 'aic', got {self.n_states!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if self.zscore not in ("per_run", "global"):
            raise ValueError(f"zscore must be 'per_run' or 'global', got {self.zscore!r}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.selection not in ("best", "mean"):
            raise ValueError(f"selection must be 'best' or 'mean', got {self.selection!r}")
        if self.n_restarts < 1 or self.max_states < 1:
            raise ValueError("n_restarts and max_states must be >= 1")
        if not (self.covariance_floor >= 0 and math.isfinite(self.covariance_floor)):
            raise ValueError(f"covariance_floor must be a finite number >= 0, got {self.covariance_floor}")

    def _feature_names(self) -> tuple[str, ...]:
        if isinstance(self.features, str):
            if self.features not in FEATURE_SETS:
                raise ValueError(f"unknown feature set {self.features!r}; known: {sorted(FEATURE_SETS)}")
            return FEATURE_SETS[self.features]
        return tuple(ALIASES.get(name, name) for name in self.features)

    def _split(self, seeds: list) -> tuple[list, list]:
        """Hold out round(test_fraction * n) runs (at least one when test_fraction > 0 and n > 1), picked
        by a seeded permutation of the sorted seeds (spec §6 #4)."""
        n = len(seeds)
        n_test = min(max(round(self.test_fraction * n), 1), n - 1) if self.test_fraction > 0 else 0
        held_out = set(np.random.default_rng(self.split_seed).permutation(n)[:n_test].tolist())
        return (
            [s for i, s in enumerate(seeds) if i not in held_out],
            [s for i, s in enumerate(seeds) if i in held_out],
        )

    def _fit_scaler(self, raw: dict, names: tuple[str, ...]) -> np.ndarray:
        """Decide the z-scoring: find constant columns (SD 0 within some run for "per_run", over the
        training rows for "global"), drop them with a warning, and store the global statistics.
        Returns the boolean mask of the kept columns."""
        if self.zscore == "per_run":
            constant = np.zeros(len(names), dtype=bool)
            for x in raw.values():
                constant |= _is_constant(x)
        else:
            rows = np.concatenate([raw[s] for s in self.train_runs_])
            constant = _is_constant(rows)
        self.dropped_features_ = [name for name, c in zip(names, constant) if c]
        if self.dropped_features_:
            where = "in some run" if self.zscore == "per_run" else "over the training runs"
            warnings.warn(f"dropped constant feature columns ({where}): {self.dropped_features_}", stacklevel=3)
        keep = ~constant
        if not keep.any():
            raise ValueError("every feature column is constant: nothing to fit")
        self.features_ = [name for name, k in zip(names, keep) if k]
        if self.zscore == "global":
            rows = np.concatenate([raw[s][:, keep] for s in self.train_runs_])
            self.zmean_, self.zstd_ = rows.mean(axis=0), rows.std(axis=0)
        else:
            self.zmean_ = self.zstd_ = None
        return keep

    def _scale(self, x: np.ndarray) -> np.ndarray:
        """(T, F) raw features -> z units: within the run (population SD) or with the stored statistics."""
        if self.zscore == "global":
            return (x - self.zmean_) / self.zstd_
        return (x - x.mean(axis=0)) / x.std(axis=0)

    def _select(self, candidates: list[int], results: list[dict], n_eval: int) -> dict:
        """Keep the best held-out restart per K, tabulate selection_, choose n_states_ (spec §4.3)."""
        n_features = len(self.features_)
        rows, kept = [], {}
        for k in candidates:
            fits = [r for r in results if r["n_states"] == k]
            ok = [r for r in fits if not r["failed"]]
            p = n_free_parameters(k, n_features, self.covariance_type)
            lls = np.array([r["test_ll"] for r in ok])
            best = max(ok, key=lambda r: r["test_ll"]) if ok else None  # first of equals: lowest restart
            ll = best["test_ll"] if best else math.nan
            kept[k] = best
            judged = ll if self.selection == "best" else (lls.mean() if ok else math.nan)
            rows.append(
                {
                    "n_states": k,
                    "test_ll_mean": lls.mean() if ok else math.nan,
                    "test_ll_std": lls.std() if ok else math.nan,
                    "test_ll_best": ll,
                    "aic": -2 * judged + 2 * p,
                    "bic": -2 * judged + p * math.log(n_eval),
                    "n_params": p,
                    "converged": bool(best is not None and best["converged"]),
                    "n_failed": len(fits) - len(ok),
                }
            )
        self.selection_ = pd.DataFrame(rows)
        usable = self.selection_.dropna(subset=["test_ll_best"])
        if usable.empty:
            raise RuntimeError(f"every restart failed (degenerate fits); see restarts_:\n{self.restarts_}")
        if isinstance(self.n_states, str):
            self.n_states_ = int(usable.loc[usable[self.n_states].idxmin(), "n_states"])
        else:
            self.n_states_ = int(self.n_states)
        return kept[self.n_states_]

    def _build_model(self, params: dict):
        """An hmmlearn model with the given learned arrays (covars as full (K, F, F) matrices)."""
        model = _new_hmm(len(params["startprob"]), self.covariance_type, self.min_covar, None, self.n_iter, self.tol)
        model.n_features = len(self.features_)
        model.startprob_, model.transmat_, model.means_ = params["startprob"], params["transmat"], params["means"]
        model.covars_ = _covars_param(params["covars"], self.covariance_type)
        return model

    def _set_arrays_from_model(self) -> None:
        self.startprob_ = self.model_.startprob_.copy()
        self.transmat_ = self.model_.transmat_.copy()
        self.means_ = self.model_.means_.copy()
        self.covars_ = self.model_.covars_.copy()

    def _state_means(self, raw: dict) -> pd.DataFrame:
        """Per state, the mean of the raw feature rows decoded to it, over all runs (NaN if none)."""
        rows = pd.DataFrame(np.concatenate(list(raw.values())), columns=self.features_)
        states = np.concatenate([self.paths_[seed] for seed in raw])
        means = rows.groupby(states).mean().reindex(range(self.n_states_))
        means.index.name = "state"
        return means

    # -- using a fitted map -----------------------------------------------------------------------------

    def transform(self, run: pd.DataFrame) -> np.ndarray:
        """The run's features in z units, (T, F), prepared and scaled as in `fit`."""
        table = prepare_run(run, self.first_n)
        missing = [f for f in self.features_ if f not in table]
        if missing:
            raise KeyError(f"feature columns missing from the run table: {missing}")
        x = table[self.features_].to_numpy(dtype=float)
        if len(x) == 0 or not np.isfinite(x).all():
            raise ValueError("the run has NaN/inf (or no rows) in the feature columns")
        if self.zscore == "per_run" and _is_constant(x).any():
            constant = [f for f, c in zip(self.features_, _is_constant(x)) if c]
            raise ValueError(f"cannot z-score the run within itself: constant columns {constant}")
        return self._scale(x)

    def predict(self, run: pd.DataFrame) -> np.ndarray:
        """Viterbi state per checkpoint row (canonical labels)."""
        return self.model_.predict(self.transform(run))

    def predict_proba(self, run: pd.DataFrame) -> np.ndarray:
        """Posterior state probabilities per checkpoint row (forward-backward), (T, K)."""
        return self.model_.predict_proba(self.transform(run))

    def score(self, runs: pd.DataFrame | Runs) -> float:
        """Total log-likelihood of one run or of several (each an independent sequence)."""
        tables = [runs] if isinstance(runs, pd.DataFrame) else list(as_runs(runs).values())
        return float(sum(self.model_.score(self.transform(table)) for table in tables))

    # -- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the fitted map as JSON (no pickle): hyper-parameters, learned arrays, tables, paths."""
        state = {
            "format": "groklab.TrainingMap/1",
            "params": self.get_params(),
            "hmmlearn_version": self.hmmlearn_version_,
            "features": self.features_,
            "dropped_features": self.dropped_features_,
            "dropped_runs": self.dropped_runs_,
            "train_runs": self.train_runs_,
            "test_runs": self.test_runs_,
            "zmean": self.zmean_,
            "zstd": self.zstd_,
            "n_states": self.n_states_,
            "raw_index": self.raw_index_,
            "converged": self.converged_,
            "startprob": self.startprob_,
            "transmat": self.transmat_,
            "means": self.means_,
            "covars": self.covars_,
            "means_original": self.means_original_.to_numpy(),
            "selection": self.selection_.to_dict(orient="list"),
            "restarts": self.restarts_.to_dict(orient="list"),
            "paths": [[seed, path] for seed, path in self.paths_.items()],
        }
        Path(path).write_text(json.dumps(_jsonable(state)))

    @classmethod
    def load(cls, path: str | Path) -> TrainingMap:
        """Read a map written by `save`; predictions equal those of the saved map."""
        state = json.loads(Path(path).read_text())
        if state.get("format") != "groklab.TrainingMap/1":
            raise ValueError(f"{path}: not a saved TrainingMap")
        params = state["params"]
        if isinstance(params["features"], list):
            params["features"] = tuple(params["features"])
        self = cls(**params)
        array = lambda value: None if value is None else np.array(value, dtype=float)  # noqa: E731
        self.hmmlearn_version_ = state["hmmlearn_version"]
        self.features_, self.dropped_features_ = state["features"], state["dropped_features"]
        self.dropped_runs_, self.train_runs_, self.test_runs_ = (
            state["dropped_runs"],
            state["train_runs"],
            state["test_runs"],
        )
        self.zmean_, self.zstd_ = array(state["zmean"]), array(state["zstd"])
        self.n_states_, self.converged_ = state["n_states"], state["converged"]
        self.raw_index_ = np.array(state["raw_index"], dtype=int)
        self.model_ = self._build_model(
            {name: array(state[name]) for name in ("startprob", "transmat", "means", "covars")}
        )
        self._set_arrays_from_model()
        self.means_original_ = pd.DataFrame(
            array(state["means_original"]), columns=self.features_, index=pd.RangeIndex(self.n_states_, name="state")
        )
        self.selection_ = pd.DataFrame(state["selection"])
        self.restarts_ = pd.DataFrame(state["restarts"])
        self.paths_ = {seed: np.array(path, dtype=int) for seed, path in state["paths"]}
        return self


# -- fitting machinery (module level, so that worker processes can run it) ------------------------------


def _hmmlearn():
    """hmmlearn, imported on first use (it pulls in scikit-learn)."""
    import hmmlearn
    import hmmlearn.hmm  # noqa: F401

    return hmmlearn


def _fast_gaussian_hmm_class():
    """hmmlearn's GaussianHMM with two full-covariance computations done in bulk, the same to rounding
    (tests/test_hmm.py checks that the fits agree) and together about 2x faster on the paper's scale:
    - the emission log-densities whiten every state with one batched Cholesky and one batched matrix
      product, where hmmlearn runs a Cholesky and a triangular solve per state and per sequence;
    - the E-step statistic sum_t gamma_t(k) x_t x_t^T is one matrix product per sequence instead of a
      three-operand einsum (about 9x faster).
    Everything else (k-means initialisation, EM, scoring, decoding) is hmmlearn's, but for the optional
    `covariance_floor` (TrainingMap's), added to the covariances' diagonal after every M-step."""
    from hmmlearn.hmm import GaussianHMM

    class FastGaussianHMM(GaussianHMM):
        covariance_floor = 0.0

        def _do_mstep(self, stats):
            super()._do_mstep(stats)
            if self.covariance_floor and "c" in self.params:
                full = self.covariance_type == "full"
                self._covars_ = self._covars_ + self.covariance_floor * (np.eye(self.n_features) if full else 1.0)

        def _compute_log_likelihood(self, X):
            if self.covariance_type != "full":
                return super()._compute_log_likelihood(X)
            try:
                chol = np.linalg.cholesky(self.covars_)  # (K, F, F)
            except np.linalg.LinAlgError:  # hmmlearn's per-state fallback (jitter, then a clear error)
                return super()._compute_log_likelihood(X)
            whiten = np.linalg.inv(chol).transpose(0, 2, 1)  # (K, F, F): x -> L^-1 x, as row vectors
            z = X[None] @ whiten - (self.means_[:, None, :] @ whiten)  # (K, T, F)
            log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)  # (K,)
            return -0.5 * (X.shape[1] * np.log(2 * np.pi) + (z**2).sum(axis=2) + log_det[:, None]).T  # (T, K)

        def _needs_sufficient_statistics_for_covars(self):
            return "c" in self.params and self.covariance_type != "full"

        def _accumulate_sufficient_statistics(self, stats, X, lattice, posteriors, fwdlattice, bwdlattice):
            super()._accumulate_sufficient_statistics(stats, X, lattice, posteriors, fwdlattice, bwdlattice)
            if "c" in self.params and self.covariance_type == "full":
                (n, k), f = posteriors.shape, X.shape[1]
                weighted = (posteriors[:, :, None] * X[:, None, :]).reshape(n, k * f)  # (T, K*F)
                stats["obs*obs.T"] += (weighted.T @ X).reshape(k, f, f)  # (K, F, F)

    return FastGaussianHMM


_HMM_CLASS = None


def _hmm_class():
    """The model class, made on first use. Call it before limiting thread pools: threadpoolctl only
    limits the libraries already loaded, and hmmlearn loads scikit-learn's OpenMP and SciPy's BLAS."""
    global _HMM_CLASS
    if _HMM_CLASS is None:
        _HMM_CLASS = _fast_gaussian_hmm_class()
    return _HMM_CLASS


def _new_hmm(
    n_states,
    covariance_type,
    min_covar,
    seed,
    n_iter,
    tol,
    implementation="log",
    covars_prior=None,
    covariance_floor=0.0,
):
    extra = {} if covars_prior is None else {"covars_prior": covars_prior}
    model = _hmm_class()(
        n_components=n_states,
        covariance_type=covariance_type,
        min_covar=min_covar,
        random_state=seed,
        n_iter=n_iter,
        tol=tol,
        implementation=implementation,
        **extra,
    )
    model.covariance_floor = covariance_floor
    return model


def _fit_hmm(
    X, lengths, n_states, covariance_type, min_covar, seed, n_iter, tol, floor_prior: bool, covariance_floor=0.0
):
    """One EM fit. EM runs with implementation="scaling" (about 1.4x faster than "log", the same fit to
    rounding); where its forward pass underflows (a row far from every state) the fit is redone in log
    space. Scoring and decoding always use log space. `floor_prior` puts min_covar on the diagonal of
    the covariance prior: hmmlearn's min_covar floors only the initial covariances, so a retry needs it.
    `covariance_floor`: added to the covariances' diagonal after every M-step (TrainingMap's)."""
    prior = None
    if floor_prior:
        prior = min_covar * (np.eye(X.shape[1]) if covariance_type == "full" else 1.0)
    for implementation in ("scaling", "log"):
        model = _new_hmm(
            n_states, covariance_type, min_covar, seed, n_iter, tol, implementation, prior, covariance_floor
        )
        try:
            model.fit(X, lengths)
        except ValueError as err:
            if implementation == "scaling" and "underflow" in str(err):
                continue
            raise
        model.implementation = "log"
        return model


def _check_fit(model) -> None:
    """Raise ValueError on the degenerate fits hmmlearn can return silently (spec §4, known issues)."""
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        if not np.isfinite(getattr(model, name)).all():
            raise ValueError(f"{name} has NaN/inf (a state lost all its posterior mass)")
    if not np.allclose(model.transmat_.sum(axis=1), 1):
        raise ValueError("rows of transmat_ must sum to 1 (a state has no observed outgoing transition)")
    if (np.linalg.eigvalsh(model.covars_) <= 0).any():
        raise ValueError("'covars' must be symmetric, positive-definite")


def _converged(history, tol: float) -> bool:
    """EM converged: the last log-likelihood gain is below tol. hmmlearn's monitor_.converged is also
    True when the iteration cap is reached, so its history is read instead (spec §6 #13)."""
    return len(history) >= 2 and history[-1] - history[-2] < tol


def _fit_restart(
    X, lengths, X_eval, lengths_eval, covariance_type, min_covar, covariance_floor, n_iter, tol, n_states, restart, seed
) -> dict:
    """Fit one seeded restart and score it on the held-out rows (total log-likelihood). A degenerate
    fit is retried with min_covar x10 (also as covariance prior), up to MAX_RETRIES times; if every
    attempt fails the result is marked failed with the last error. BLAS / OpenMP run single-threaded:
    faster for these small matrices, no oversubscription under n_jobs, the same numbers in every
    process. The fitted arrays (covars as full matrices) are returned, not the model object."""
    from threadpoolctl import threadpool_limits

    _hmm_class()
    result = {"n_states": n_states, "restart": restart, "random_state": seed}
    with threadpool_limits(limits=1), np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for attempt in range(MAX_RETRIES + 1):
            floor = min_covar * 10**attempt
            try:
                model = _fit_hmm(
                    X, lengths, n_states, covariance_type, floor, seed, n_iter, tol, attempt > 0, covariance_floor
                )
                _check_fit(model)
                test_ll = model.score(X_eval, lengths_eval)
                if not np.isfinite(test_ll):
                    raise ValueError("held-out log-likelihood is not finite")
            except ValueError as err:  # LinAlgError is a ValueError
                error = f"{type(err).__name__}: {err}"
                continue
            history = list(model.monitor_.history)
            params = {
                "startprob": model.startprob_,
                "transmat": model.transmat_,
                "means": model.means_,
                "covars": model.covars_,
            }
            return {
                **result,
                "test_ll": float(test_ll),
                "converged": _converged(history, tol),
                "n_iter": len(history),
                "min_covar": floor,
                "attempts": attempt + 1,
                "failed": False,
                "error": None,
                "params": params,
            }
    return {
        **result,
        "test_ll": math.nan,
        "converged": False,
        "n_iter": 0,
        "min_covar": floor,
        "attempts": MAX_RETRIES + 1,
        "failed": True,
        "error": error,
        "params": None,
    }


_WORKER_DATA: dict = {}


def _set_worker_data(data: dict, log_level: int) -> None:
    _WORKER_DATA.update(data)
    logging.getLogger("hmmlearn").setLevel(log_level)  # as the caller has it (a spawned process starts afresh)


def _fit_in_worker(job: tuple) -> tuple[dict, list[tuple[str, type]]]:
    """The fit, and the warnings it raised, to be raised again in the caller (where they are counted or shown)
    instead of printed by the worker."""
    n_states, restart, seed = job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit_restart(**_WORKER_DATA, n_states=n_states, restart=restart, seed=seed)
    return result, [(str(w.message), w.category) for w in caught]


def _run_restarts(data: dict, jobs: list[tuple], n_jobs: int) -> list[dict]:
    """Every (K, restart, seed) fit, in the order of `jobs`. With n_jobs > 1 they run in "spawn" worker
    processes (fork is unsafe once OpenMP has run in this process), largest K first so that the slowest
    fits start early; each fit is seeded and single-threaded, so the results equal the serial ones."""
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    if n_jobs is None or n_jobs <= 1 or len(jobs) == 1:
        return [_fit_restart(**data, n_states=k, restart=i, seed=s) for k, i, s in jobs]
    order = sorted(range(len(jobs)), key=lambda j: -jobs[j][0])
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("hmmlearn").level
    with ProcessPoolExecutor(
        min(n_jobs, len(jobs)), mp_context=context, initializer=_set_worker_data, initargs=(data, level)
    ) as pool:
        done = dict(zip(order, pool.map(_fit_in_worker, [jobs[j] for j in order])))
    for j in range(len(jobs)):
        for message, category in done[j][1]:
            warnings.warn(message, category, stacklevel=2)
    return [done[j][0] for j in range(len(jobs))]


# -- helpers ---------------------------------------------------------------------------------------------


def _is_constant(x: np.ndarray) -> np.ndarray:
    """Per column of (T, F): SD zero up to rounding (relative to the column's magnitude)."""
    return x.std(axis=0) <= 1e-12 * np.maximum(np.abs(x).max(axis=0, initial=0.0), 1e-300)


def _first_visit_order(paths: list[np.ndarray], n_states: int) -> np.ndarray:
    """Raw state indices in canonical order (spec §6 #14): by mean first-visit checkpoint index over
    the runs that visit the state; never-visited states last; ties by raw index."""
    total, visits = np.zeros(n_states), np.zeros(n_states)
    for path in paths:
        states, first = np.unique(path, return_index=True)
        total[states] += first
        visits[states] += 1
    mean_first = np.where(visits > 0, total / np.maximum(visits, 1), np.inf)
    return np.lexsort((np.arange(n_states), mean_first))


def _covars_param(covars_full: np.ndarray, covariance_type: str) -> np.ndarray:
    """hmmlearn's covars_ setter takes (K, F, F) for "full" and the (K, F) diagonals for "diag"."""
    return covars_full if covariance_type == "full" else np.diagonal(covars_full, axis1=1, axis2=2).copy()


def _permute(params: dict, order: np.ndarray) -> dict:
    """Relabel the states of fitted arrays: new state c = old state order[c]."""
    return {
        "startprob": params["startprob"][order],
        "transmat": params["transmat"][np.ix_(order, order)],
        "means": params["means"][order],
        "covars": params["covars"][order],
    }


def _jsonable(value):
    """Arrays, numpy scalars and NaN -> plain JSON values (NaN/inf become null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

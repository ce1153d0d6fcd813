"""Convergence times, state occupancy (how long and when), detour tests, transitions and the training-map graph.

Hu, Chen, Saphra, Cho, "Latent State Models of Training Dynamics" (TMLR 2023) §4-5, as specified in
spec/training-maps.md §5 with the decisions of its §6 table: two-sided p-values (#1), the vector
form of the transition gradient (#2), Holm-adjusted p-values, a joint time-in-state regression and
the count of censored runs (#12), trimmed maps with unnormalised probabilities (#15).

`paths` everywhere is {seed: Viterbi state sequence}, e.g. `TrainingMap.paths_`. The detour test of
the paper uses all runs; for the held-out runs only (spec §6 #11) pass
`{s: tm.paths_[s] for s in tm.test_runs_}`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.special import stdtr

from groklab.dynamics.hmm import Runs, TrainingMap, as_runs, prepare_run

Paths = Mapping[object, np.ndarray]


def convergence_times(
    runs: Runs, column: str = "test_acc", threshold: float = 0.9, first_n: int | None = None
) -> pd.DataFrame:
    """First checkpoint at which `column` crosses `threshold`, per run (spec §5.2).

    The crossing is `column >= threshold`, or `<=` for a column ending in "_loss" (the released code
    uses `>` for every column, losses included). `index` is the row within the run's first `first_n`
    rows (sorted by step); a run that never crosses is right-censored: converged False, censored True,
    index = its number of rows, step = its last step. Returns one row per seed: seed, converged,
    index, step, censored."""
    rows = []
    for seed, table in as_runs(runs).items():
        table = prepare_run(table, first_n)
        values = table[column].to_numpy(dtype=float)
        steps = table["step"].to_numpy() if "step" in table else np.arange(len(table))
        crossed = values <= threshold if column.endswith("_loss") else values >= threshold
        hits = np.flatnonzero(crossed)  # NaN never crosses
        if len(hits):
            rows.append(
                {"seed": seed, "converged": True, "index": int(hits[0]), "step": steps[hits[0]], "censored": False}
            )
        else:
            rows.append(
                {
                    "seed": seed,
                    "converged": False,
                    "index": len(table),
                    "step": steps[-1] if len(steps) else math.nan,
                    "censored": True,
                }
            )
    return pd.DataFrame(rows, columns=["seed", "converged", "index", "step", "censored"])


def censored_median(steps, censored) -> tuple[float, bool]:
    """The median convergence step over all runs, right-censored ones included (a censored run's step is the
    last it reached: it converges later, if ever), and whether it is known. The median of these lower bounds
    is a lower bound of the true median; it is the median itself when the runs it rests on (the lower half and
    the middle, after sorting with a censored run after a converged one at the same step) all converged: a
    censored run's true time can only move it further up. (NaN, False) with no runs."""
    steps, censored = np.asarray(steps, dtype=float), np.asarray(censored, dtype=bool)
    if len(steps) == 0:
        return math.nan, False
    lower = np.where(np.isnan(steps), 0.0, steps)  # a run not yet started: converges after step 0
    order = np.lexsort((censored, lower))
    return float(np.median(lower)), not censored[order[: len(steps) // 2 + 1]].any()


def convergence_threshold(runs: Runs, column: str) -> float:
    """A threshold every run crosses, for series without a natural target (an imported LM pretraining run has
    a loss, no accuracy to reach): the worst of the runs' final values of `column` (the highest for a column
    ending in "_loss", else the lowest), so a run's convergence time is the first checkpoint at which it is
    as good as the worst run ends. NaN where no run has a value."""
    finals = []
    for table in as_runs(runs).values():
        values = prepare_run(table)[column].dropna() if column in table else pd.Series(dtype=float)
        if len(values):
            finals.append(float(values.iloc[-1]))
    if not finals:
        return math.nan
    return max(finals) if column.endswith("_loss") else min(finals)


def _n_states(paths: Paths, n_states: int | None) -> int:
    return n_states if n_states is not None else int(max(np.max(p) for p in paths.values())) + 1


def state_occupancy(paths: Paths, n_states: int | None = None, normalize: bool = True) -> pd.DataFrame:
    """Seeds x states: the fraction (or, with normalize=False, the number) of checkpoints in each state."""
    k = _n_states(paths, n_states)
    counts = np.array([np.bincount(np.asarray(p, dtype=int), minlength=k) for p in paths.values()])
    table = counts / counts.sum(axis=1, keepdims=True) if normalize else counts
    return pd.DataFrame(table, index=pd.Index(list(paths), name="seed"), columns=pd.RangeIndex(k, name="state"))


def occupancy_over_time(paths: Paths, n_states: int | None = None) -> pd.DataFrame:
    """Checkpoints x states: the share of the runs still running at each checkpoint (index = checkpoint
    index within a run) that are in each state; each row sums to 1. `state_occupancy` says how long a
    state is occupied, this says when: a state can be occupied at two times (e.g. at initialisation and
    again late in training, which per-run z-scoring can put side by side), so its mean test accuracy
    mixes both, and paths that go back and forth between two states show here as two interleaved bands."""
    k = _n_states(paths, n_states)
    length = max(len(p) for p in paths.values())
    counts = np.zeros((length, k))  # (checkpoint, state)
    for path in paths.values():
        path = np.asarray(path, dtype=int)
        np.add.at(counts, (np.arange(len(path)), path), 1)
    return pd.DataFrame(
        counts / counts.sum(axis=1, keepdims=True),
        index=pd.RangeIndex(length, name="checkpoint"),
        columns=pd.RangeIndex(k, name="state"),
    )


def visited(paths: Paths, n_states: int | None = None) -> pd.DataFrame:
    """Seeds x states: does the run's path enter the state at all."""
    return state_occupancy(paths, n_states, normalize=False) > 0


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values of a vector (no NaN)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _two_sided_p(t: np.ndarray, df: float) -> np.ndarray:
    """p = 2 (1 - F_t(|t|, df)) (spec §6 #1: the released code omits the absolute value)."""
    return 2 * stdtr(df, -np.abs(t))


def detour_test(
    paths: Paths, convergence: pd.DataFrame | pd.Series | Mapping, alpha: float = 0.05, exclude_censored: bool = False
) -> pd.DataFrame:
    """Which states go with slower convergence (Hu et al. 2023 §4.2; spec §5.3, §6 #1, #12).

    For each state k, over the runs: the visit indicator I_k(run) = k appears in the run's path;
    r = Pearson(I_k, convergence index), t = r sqrt(n-2) / sqrt(1-r^2), p = 2(1 - F_t(|t|, n-2)).
    A state visited by every run or by none is obligatory (r, t, p NaN). p_holm adjusts p over the
    non-obligatory states (Holm); a detour is a state with p_holm < alpha and r > 0.

    Also a joint OLS of the convergence index on the number of checkpoints spent in each
    non-obligatory state (with intercept): coef_time, se_time, t_time, p_time (two-sided). Where that
    design is rank-deficient (e.g. the states' times add up to the run length) the columns are NaN,
    with a warning.

    `convergence` is the output of `convergence_times` (columns seed, index, censored) or a mapping /
    Series seed -> convergence index. df.attrs holds n_runs, n_censored (among the runs with a path)
    and exclude_censored."""
    index, censored = _convergence_columns(convergence)
    missing = [seed for seed in paths if seed not in index]
    if missing:
        raise ValueError(f"no convergence time for seeds {missing}")
    n_censored = int(sum(censored[seed] for seed in paths))
    seeds = [seed for seed in paths if not (exclude_censored and censored[seed])]
    used = {seed: paths[seed] for seed in seeds}
    k = _n_states(paths, None)
    y = np.array([index[seed] for seed in seeds], dtype=float)
    time_in = state_occupancy(used, k, normalize=False).to_numpy(dtype=float) if seeds else np.zeros((0, k))
    visits = time_in > 0
    n = len(seeds)

    n_visit = visits.sum(axis=0)
    obligatory = (n_visit == 0) | (n_visit == n)
    r = np.full(k, math.nan)
    for state in np.flatnonzero(~obligatory):
        r[state] = _pearson(visits[:, state].astype(float), y)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * math.sqrt(max(n - 2, 0)) / np.sqrt(1 - r**2)
    p = _two_sided_p(t, n - 2) if n > 2 else np.full(k, math.nan)
    p_holm = np.full(k, math.nan)
    tested = np.isfinite(p)
    p_holm[tested] = _holm(p[tested])
    with np.errstate(invalid="ignore"):
        mean_visit = [y[visits[:, s]].mean() if n_visit[s] else math.nan for s in range(k)]
        mean_not = [y[~visits[:, s]].mean() if n - n_visit[s] else math.nan for s in range(k)]

    table = pd.DataFrame(
        {
            "state": np.arange(k),
            "n_visit": n_visit,
            "n_not": n - n_visit,
            "mean_conv_visit": mean_visit,
            "mean_conv_not": mean_not,
            "r": r,
            "t": t,
            "p": p,
            "p_holm": p_holm,
            "obligatory": obligatory,
            "detour": (p_holm < alpha) & (r > 0),
        }
    )
    regression = _time_regression(time_in[:, ~obligatory], y)
    for column in ("coef_time", "se_time", "t_time", "p_time"):
        table[column] = math.nan
        table.loc[~obligatory, column] = regression[column]
    table.attrs.update({"n_runs": n, "n_censored": n_censored, "exclude_censored": exclude_censored})
    return table


def _convergence_columns(convergence) -> tuple[dict, dict]:
    """{seed: index}, {seed: censored} from convergence_times' table or a seed -> index mapping."""
    if isinstance(convergence, pd.DataFrame):
        frame = convergence.set_index("seed")
        censored = frame["censored"] if "censored" in frame else pd.Series(False, index=frame.index)
        return frame["index"].to_dict(), censored.astype(bool).to_dict()
    index = dict(convergence)
    return index, {seed: False for seed in index}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt((dx @ dx) * (dy @ dy))
    return float(np.clip(dx @ dy / denominator, -1, 1)) if denominator > 0 else math.nan


def _time_regression(time_in: np.ndarray, y: np.ndarray) -> dict:
    """OLS y ~ 1 + time in each state: coefficient, SE, t and two-sided p per state (column)."""
    n, m = time_in.shape
    nan = {c: np.full(m, math.nan) for c in ("coef_time", "se_time", "t_time", "p_time")}
    if m == 0:
        return nan
    design = np.column_stack([np.ones(n), time_in])
    dof = n - design.shape[1]
    if dof <= 0 or np.linalg.matrix_rank(design) < design.shape[1]:
        warnings.warn(
            "time-in-state regression is rank-deficient (too few runs, or the states' times add up "
            "to a constant): coef_time etc. are NaN",
            stacklevel=3,
        )
        return nan
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ beta
    covariance = (residual @ residual / dof) * np.linalg.inv(design.T @ design)
    se = np.sqrt(np.diag(covariance))[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = beta[1:] / se
    return {"coef_time": beta[1:], "se_time": se, "t_time": t, "p_time": _two_sided_p(t, dof)}


def transition_table(paths: Paths, model: TrainingMap | None = None) -> pd.DataFrame:
    """Every pair (s_t, s_t+1) that occurs in the paths, self-loops included: count (occurrences),
    runs (number of runs taking it) and prob (the fitted transmat_ entry, NaN without a model)."""
    counts: dict[tuple[int, int], int] = {}
    runs: dict[tuple[int, int], int] = {}
    for path in paths.values():
        path = np.asarray(path, dtype=int)
        pairs, n = np.unique(np.column_stack([path[:-1], path[1:]]), axis=0, return_counts=True)
        for (i, j), c in zip(pairs.tolist(), n.tolist()):
            counts[i, j] = counts.get((i, j), 0) + c
            runs[i, j] = runs.get((i, j), 0) + 1
    rows = [
        {
            "from": i,
            "to": j,
            "count": counts[i, j],
            "runs": runs[i, j],
            "prob": float(model.transmat_[i, j]) if model is not None else math.nan,
        }
        for i, j in sorted(counts)
    ]
    return pd.DataFrame(rows, columns=["from", "to", "count", "runs", "prob"])


def _log_emissions(model: TrainingMap, z: np.ndarray) -> np.ndarray:
    """log N(z_t; mu_k, Sigma_k), (T, K)."""
    out = np.empty((len(z), len(model.means_)))
    for k, (mu, sigma) in enumerate(zip(model.means_, model.covars_)):
        chol = np.linalg.cholesky(sigma)
        solved = np.linalg.solve(chol, (z - mu).T)  # (F, T)
        out[:, k] = -0.5 * (
            (solved**2).sum(axis=0) + 2 * np.log(np.diag(chol)).sum() + z.shape[1] * math.log(2 * math.pi)
        )
    return out


def filtered_log_posterior(model: TrainingMap, z: np.ndarray) -> np.ndarray:
    """log p(s_t = k | z_1..t) for every t: the normalised forward variable, (T, K)."""
    log_b = _log_emissions(model, z)
    with np.errstate(divide="ignore"):
        log_a, log_start = np.log(model.transmat_), np.log(model.startprob_)
    out = np.empty_like(log_b)
    alpha = log_start + log_b[0]
    out[0] = alpha - np.logaddexp.reduce(alpha)
    for t in range(1, len(z)):
        alpha = np.logaddexp.reduce(out[t - 1][:, None] + log_a, axis=0) + log_b[t]
        out[t] = alpha - np.logaddexp.reduce(alpha)
    return out


def filtered_posterior_gradient(model: TrainingMap, z: np.ndarray, j: int) -> np.ndarray:
    """d/dz_t log p(s_t = j | z_1..t) for every t, (T, F) (spec §5.4, vector form of §6 #2):
    Sigma_j^-1 (mu_j - z_t) - sum_k pi_t(k) Sigma_k^-1 (mu_k - z_t), pi_t the filtered posterior."""
    pi = np.exp(filtered_log_posterior(model, z))  # (T, K)
    precisions = np.linalg.inv(model.covars_)  # (K, F, F)
    pulls = np.einsum("kfg,tkg->tkf", precisions, model.means_[None] - z[:, None])  # (T, K, F)
    return pulls[:, j] - np.einsum("tk,tkf->tf", pi, pulls)


def transition_features(model: TrainingMap, runs: Runs, i: int, j: int) -> pd.DataFrame:
    """Which features drive the transition i -> j (Hu et al. 2023 §4.3; spec §5.4).

    At every t with s_t = i and s_t+1 = j in the runs' Viterbi paths, the gradient of the filtered
    log-posterior log p(s_t = j | z_1..t) with respect to the z-scored observation z_t; averaged over
    the occurrences. One row per feature, by decreasing |mean_gradient|: feature, mean_gradient,
    abs_rank (1 = largest), mean_shift = mu_j - mu_i (z units). attrs["n_occurrences"]. Runs the
    model dropped (NaN features) are skipped."""
    gradients = []
    for seed, table in as_runs(runs).items():
        if seed in model.dropped_runs_:
            continue
        z = model.transform(table)
        path = model.model_.predict(z)
        at = np.flatnonzero((path[:-1] == i) & (path[1:] == j))
        if len(at):
            gradients.append(filtered_posterior_gradient(model, z, j)[at])
    if not gradients:
        raise ValueError(f"the transition {i} -> {j} never occurs in the decoded paths")
    mean = np.concatenate(gradients).mean(axis=0)
    table = pd.DataFrame(
        {
            "feature": model.features_,
            "mean_gradient": mean,
            "abs_rank": pd.Series(np.abs(mean)).rank(ascending=False, method="first").astype(int),
            "mean_shift": model.means_[j] - model.means_[i],
        }
    )
    table = table.sort_values("abs_rank").reset_index(drop=True)
    table.attrs["n_occurrences"] = sum(len(g) for g in gradients)
    return table


def training_map_graph(
    model: TrainingMap, paths: Paths | None = None, runs: Runs | None = None, renormalize: bool = False
):
    """The trimmed training map (spec §5.1, §6 #15) as a networkx DiGraph.

    Nodes: every state, with occupancy (fraction of all checkpoints), n_runs (runs visiting it) and,
    where `runs` is given and has a `test_acc` column, test_acc (mean over the checkpoints in the
    state). Edges: the transitions that occur in the paths, self-loops included, with prob (the fitted
    transmat_ entry, not renormalised unless `renormalize`), count and runs. `paths` defaults to
    model.paths_; `runs` must be the tables the paths were decoded from."""
    import networkx as nx

    paths = model.paths_ if paths is None else paths
    k = model.n_states_
    counts = state_occupancy(paths, k, normalize=False)
    accuracy = _state_test_acc(model, paths, runs) if runs is not None else None
    graph = nx.DiGraph()
    for state in range(k):
        attributes = {
            "occupancy": counts[state].sum() / counts.to_numpy().sum(),
            "n_runs": int((counts[state] > 0).sum()),
        }
        if accuracy is not None:
            attributes["test_acc"] = accuracy[state]
        graph.add_node(state, **attributes)
    edges = transition_table(paths, model)
    if renormalize:
        edges["prob"] = edges["prob"] / edges.groupby("from")["prob"].transform("sum")
    for edge in edges.to_dict(orient="records"):
        graph.add_edge(edge["from"], edge["to"], prob=edge["prob"], count=edge["count"], runs=edge["runs"])
    return graph


def _state_test_acc(model: TrainingMap, paths: Paths, runs: Runs) -> list | None:
    """Mean test_acc over the checkpoints decoded to each state, or None without a test_acc column."""
    tables = as_runs(runs)
    if not all("test_acc" in table for table in tables.values()):
        return None
    values, states = [], []
    for seed, path in paths.items():
        if seed not in tables:
            raise ValueError(f"no run table for seed {seed!r}")
        table = prepare_run(tables[seed], model.first_n)
        if len(table) != len(path):
            raise ValueError(f"seed {seed!r}: {len(table)} rows but a path of {len(path)} states")
        values.append(table["test_acc"].to_numpy(dtype=float))
        states.append(np.asarray(path, dtype=int))
    means = pd.Series(np.concatenate(values)).groupby(np.concatenate(states)).mean()
    return [float(means.get(state, math.nan)) for state in range(model.n_states_)]

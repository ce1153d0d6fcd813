"""Wall time of HMM model selection at the paper's scale (Hu et al. 2023; spec/training-maps.md §4).

40 runs x 1,000 checkpoints x 14 features (the modular-addition setup), K = 1..8, 5 seeded restarts,
32 EM iterations, full covariance: 40 fits. Prints the wall time (target on a 2-core machine: 60 s),
the selected K and the selection table, and the same 40 fits done the released code's way in the same
run as the baseline: plain hmmlearn GaussianHMM (log-space EM), one process. Nothing is asserted.

By default the runs are synthetic: each run walks left to right through a few regimes (an early
phase, a memorising phase, for about half the runs a plateau "detour", a circuit phase, a converged
phase) with random durations; features are regime means plus AR(1) noise, on very different raw
scales. `--table` reads real runs instead: a CSV or Parquet file in long form with a `seed` column.

    python benchmarks/hmm_speed.py [--n-jobs 2] [--table runs.parquet] [--features base]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from groklab.dynamics.hmm import FEATURE_SETS, TrainingMap


def synthetic_runs(n_runs=40, n_checkpoints=1000, features=FEATURE_SETS["base"], seed=0) -> dict:
    """{seed: table}: step, the feature columns, test_acc; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_features, n_regimes = len(features), 5
    means = rng.normal(0, 3, (n_regimes, n_features))
    mixing = rng.normal(0, 0.5, (n_regimes, n_features, n_features))
    scales = 10.0 ** rng.uniform(-3, 3, n_features)
    offsets = rng.normal(0, 10, n_features) * scales
    accuracy = np.array([0.01, 0.05, 0.1, 0.6, 1.0])
    runs = {}
    for run in range(n_runs):
        regimes = [0, 1, 2, 3, 4] if rng.random() < 0.5 else [0, 1, 3, 4]
        cuts = np.sort(rng.choice(np.arange(20, n_checkpoints - 20), len(regimes) - 1, replace=False))
        state = np.array(regimes)[np.searchsorted(cuts, np.arange(n_checkpoints), side="right")]
        noise = np.zeros((n_checkpoints, n_features))
        for t in range(n_checkpoints):
            innovation = mixing[state[t]] @ rng.normal(size=n_features) + 0.3 * rng.normal(size=n_features)
            noise[t] = 0.5 * noise[t - 1] + innovation if t else innovation
        table = pd.DataFrame(offsets + scales * (means[state] + noise), columns=list(features))
        table.insert(0, "step", np.arange(n_checkpoints) * 150)
        table["test_acc"] = np.clip(accuracy[state] + rng.normal(0, 0.01, n_checkpoints), 0, 1)
        runs[run] = table
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="CSV or Parquet, long form with a `seed` column (default: synthetic)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--features", default="base", help="a feature set name")
    parser.add_argument("--max-states", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--n-iter", type=int, default=32)
    parser.add_argument("--covariance", default="full", choices=["full", "diag"])
    parser.add_argument("--n-jobs", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-hmmlearn baseline")
    args = parser.parse_args()

    if args.table:
        long = pd.read_parquet(args.table) if args.table.endswith(".parquet") else pd.read_csv(args.table)
        runs = {seed: table.drop(columns="seed") for seed, table in long.groupby("seed")}
    else:
        runs = synthetic_runs(args.runs, args.checkpoints, FEATURE_SETS[args.features])
    rows = sum(len(t) for t in runs.values())
    print(
        f"{len(runs)} runs, {rows} checkpoints, features {args.features!r}; K = 1..{args.max_states}, "
        f"{args.restarts} restarts, n_iter {args.n_iter}, {args.covariance} covariance, n_jobs {args.n_jobs}, "
        f"{os.cpu_count()} cores"
    )

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    tm = TrainingMap(
        features=args.features,
        covariance_type=args.covariance,
        n_restarts=args.restarts,
        n_iter=args.n_iter,
        max_states=args.max_states,
        n_jobs=args.n_jobs,
    ).fit(runs)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(tm.selection_.round(2).to_string(index=False))
    failed = int(tm.restarts_["failed"].sum())
    capped = int((~tm.restarts_["converged"] & ~tm.restarts_["failed"]).sum())
    print(
        f"selected K = {tm.n_states_} (BIC on {len(tm.test_runs_)} held-out runs); "
        f"{failed} failed fits, {capped} of {len(tm.restarts_)} fits stopped at n_iter"
    )
    print(
        f"wall time: {wall:.1f} s (target <= 60 s on 2 cores); CPU time {cpu:.1f} s (this process and its "
        f"workers: what the fit costs whatever else the machine runs)"
    )
    if not args.no_baseline:
        base = baseline_seconds(tm, runs, args)
        print(
            f"baseline (plain hmmlearn GaussianHMM, log-space EM, one process, the same {len(tm.restarts_)} fits): "
            f"{base:.1f} s; groklab is {base / wall:.1f}x faster in wall time ({base / cpu:.1f}x in CPU time)"
        )


def baseline_seconds(tm: TrainingMap, runs: dict, args) -> float:
    """The same K x restart fits as `tm`, as the released code runs them: hmmlearn's GaussianHMM,
    implementation "log", serially, then scored on the held-out runs."""
    from hmmlearn.hmm import GaussianHMM

    z = {seed: tm.transform(table) for seed, table in runs.items()}
    x = np.concatenate([z[s] for s in tm.train_runs_])
    lengths = [len(z[s]) for s in tm.train_runs_]
    x_eval = np.concatenate([z[s] for s in tm.test_runs_])
    lengths_eval = [len(z[s]) for s in tm.test_runs_]
    start = time.perf_counter()
    for row in tm.restarts_.itertuples():
        model = GaussianHMM(
            n_components=row.n_states,
            covariance_type=args.covariance,
            n_iter=args.n_iter,
            tol=1e-2,
            random_state=row.random_state,
            min_covar=1e-3,
        )
        with np.errstate(all="ignore"):
            try:
                model.fit(x, lengths)
                model.score(x_eval, lengths_eval)
            except ValueError:  # a degenerate fit: groklab retries it, the released code stops here
                pass
    return time.perf_counter() - start


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()

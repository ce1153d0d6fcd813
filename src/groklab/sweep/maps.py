"""The training map of a sweep (Hu et al. 2023): fit the HMM over the runs' weight statistics, find the
detours, and write the map, its tables and an HTML report into SWEEP_DIR/map/.

    result = groklab.map_sweep("sweeps/hu-sparse-parity")      # == groklab map sweeps/hu-sparse-parity
    result.model.n_states_, result.detours, result.path
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from groklab.dynamics import (
    FEATURE_SETS,
    TrainingMap,
    convergence_threshold,
    convergence_times,
    detour_test,
    map_robustness,
    state_occupancy,
    transition_features,
    transition_table,
)
from groklab.dynamics.robustness import Robustness
from groklab.errors import ConfigError, UserError
from groklab.store import SweepDir
from groklab.store.sweep_dir import point_name

# a diverged run has a path up to its divergence; an imported one (groklab import) is whole
USABLE = ("finished", "stopped_early", "diverged", "imported")
MIN_RUNS = 3


@dataclass
class MapResult:
    path: Path  # SWEEP_DIR/map
    model: TrainingMap
    convergence: pd.DataFrame  # convergence_times of the runs used
    detours: pd.DataFrame  # detour_test
    states: pd.DataFrame  # one row per state: occupancy, accuracy, timing, detour statistics, means
    skipped: dict  # seed -> why the run was left out
    robustness: Robustness | None = None  # with `robustness` > 0: the refits (dynamics.robustness)
    column: str | None = "test_acc"  # the convergence column (None: none, no detour test)
    threshold: float | None = None  # the convergence threshold used (derived where none was given)


def map_sweep(
    sweep_dir: str | Path | SweepDir,
    features: str | Sequence[str] = "base",
    n_states: int | str = "bic",
    threshold: float | None = 0.9,
    column: str | None = "test_acc",
    zscore: str = "per_run",
    n_restarts: int = 5,
    random_state: int = 0,
    alpha: float = 0.05,
    n_jobs: int = 1,
    png: bool = True,
    point: dict | None = None,
    selection: str = "best",
    robustness: int = 0,
    bootstrap: bool = False,
    covariance: str = "full",
    covariance_floor: float = 0.0,
    name: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> MapResult:
    """Fit a TrainingMap over the sweep's finished runs and write SWEEP_DIR/map/: training_map.png/.svg,
    report.html, training_map.json (the fitted model) and the CSV tables selection, restarts, states,
    detours, transitions, transition_features, paths and convergence. A grid sweep is mapped one `point`
    of its grid at a time (e.g. {"model.n_layers": 4}), into SWEEP_DIR/map/KEY=VALUE/. With `robustness`
    N > 0, model selection and the detour test are repeated N times over other restart seeds (and, with
    `bootstrap`, resamples of the runs; `dynamics.robustness`): tables robustness_fits, robustness_states
    and robustness_summary, and a stability figure in the report. Convergence is `column` crossing
    `threshold` (>= ; <= for a loss); threshold None: the worst of the runs' final values
    (dynamics.convergence_threshold); column None (a series without evaluations, e.g. imported LM
    checkpoints): the map is fitted and drawn without the detour test. `covariance`: the HMM's, "full" or
    "diag" (Hu et al.'s choice for few runs, as their 5 MultiBERTs); `covariance_floor`: added to every state's
    covariance diagonal after each EM step, in z units (TrainingMap's; 0, the paper's fit: none). `name`: written into SWEEP_DIR/map-NAME/
    instead, beside the sweep's own map (which `show` and `compare` use), e.g. one map per K to compare."""
    sweep_dir = sweep_dir if isinstance(sweep_dir, SweepDir) else SweepDir.open(Path(sweep_dir))
    runs, skipped = _usable_runs(sweep_dir, point)
    names = _check_features(features, runs)
    # the evaluations that have every feature (weight statistics may be logged at checkpoints only)
    runs = {seed: table.dropna(subset=list(names)).reset_index(drop=True) for seed, table in runs.items()}
    if column is not None and not any(column in table for table in runs.values()):
        raise UserError(
            f"--metric: the runs' metrics have no column '{column}'; e.g. test_acc, or a structural task's gen_* metric"
        )
    if column is not None and threshold is None:
        threshold = convergence_threshold(runs, column)
    progress(
        f"map {sweep_dir.path}: {len(runs)} runs x {int(np.mean([len(t) for t in runs.values()]))} "
        f"checkpoints x {len(names)} features; skipped {len(skipped)}; fitting "
        f"{'K = ' + str(n_states) if isinstance(n_states, int) else 'K = 1..8 by ' + n_states.upper()}, "
        f"{n_restarts} restarts each"
    )
    model = TrainingMap(
        n_states=n_states,
        features=features,
        zscore=zscore,
        n_restarts=n_restarts,
        random_state=random_state,
        n_jobs=n_jobs,
        selection=selection,
        covariance_type=covariance,
        covariance_floor=covariance_floor,
    )
    with _quiet_hmmlearn(progress):
        try:
            model.fit(runs)
        except (ValueError, RuntimeError) as err:
            raise UserError(f"cannot fit the training map: {err}") from None
    used = {seed: table for seed, table in runs.items() if seed in model.paths_}
    if column is not None:
        convergence = convergence_times(used, column, threshold)
        detours = detour_test(model.paths_, convergence, alpha=alpha)
    else:  # no convergence metric: every detour statistic NaN
        convergence = pd.DataFrame(
            {"seed": list(used), "converged": False, "index": math.nan, "step": math.nan, "censored": False}
        )
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore")
            detours = detour_test(model.paths_, convergence, alpha=alpha)
    states = _state_table(model, used, detours, column)
    transitions = transition_table(model.paths_, model)
    tables = {
        "selection": model.selection_,
        "restarts": model.restarts_,
        "states": states,
        "detours": detours,
        "transitions": transitions,
        "transition_features": _transition_features(model, used, transitions),
        "paths": _paths_table(model, used),
        "convergence": convergence,
    }
    stability = None
    if robustness > 0 and column is None:
        progress("robustness: skipped (no convergence metric, so no detour test to repeat)")
    elif robustness > 0:
        progress(f"robustness: {robustness} more fits ({'resampled runs, ' if bootstrap else ''}other restart seeds)")
        with _quiet_hmmlearn(progress):
            try:
                stability = map_robustness(
                    used, convergence, model, robustness, bootstrap, alpha, random_state, progress
                )
            except (ValueError, RuntimeError) as err:
                raise UserError(f"cannot refit the training map for --robustness: {err}") from None
        tables.update(
            robustness_fits=stability.fits, robustness_states=stability.states, robustness_summary=stability.summary
        )
    page, save_drawings = _report(sweep_dir, model, tables, threshold, column, skipped, png)
    path = sweep_dir.write_map(tables, page, save_drawings, model.save, point, name)
    return MapResult(path, model, convergence, detours, states, skipped, stability, column, threshold)


@contextlib.contextmanager
def _quiet_hmmlearn(progress: Callable[[str], None]):
    """hmmlearn's per-iteration "not converging" lines silenced (convergence is in the selection table) and its
    warnings, repeated for every restart, passed on once each with their count."""
    hmm_log = logging.getLogger("hmmlearn")
    level = hmm_log.level
    hmm_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        hmm_log.setLevel(level)
        counts: dict[str, int] = {}
        for warning in caught:
            text = str(warning.message).split(" Current:")[0]
            counts[text] = counts.get(text, 0) + 1
        for text, n in counts.items():
            progress(f"warning: {text}" + (f" ({n} times over the fits)" if n > 1 else ""))


def _usable_runs(sweep_dir: SweepDir, point: dict | None = None) -> tuple[dict[int, pd.DataFrame], dict[int, str]]:
    from groklab.sweep import sweep_runs

    points = sweep_dir.points
    if points == [{}] and point:
        raise UserError(f"{sweep_dir.path} has no grid: drop --point")
    if points != [{}] and point not in points:  # a map is fitted over the seeds of one config
        choices = "; ".join(point_name(p) for p in points)
        raise UserError(f"{sweep_dir.path} sweeps a grid: map one point of it with --point, one of: {choices}")
    runs, skipped = {}, {}
    started = sweep_runs(sweep_dir, point)
    for seed in sweep_dir.seeds:
        run = started.get(seed)
        status = run.status if run is not None else "not started"
        if status not in USABLE:
            skipped[seed] = status
        elif run.metrics.empty:
            skipped[seed] = "no metrics"
        else:
            runs[seed] = run.metrics
    if len(runs) < MIN_RUNS:
        raise UserError(
            f"{sweep_dir.path}: {len(runs)} finished run(s); a training map needs at least {MIN_RUNS}. "
            "Finish the sweep first (run the same `groklab sweep` command again)"
        )
    return runs, skipped


def _check_features(features, runs: dict[int, pd.DataFrame]) -> tuple[str, ...]:
    if isinstance(features, str):
        if features not in FEATURE_SETS:
            raise ConfigError(
                f"unknown feature set '{features}'; use one of {', '.join(FEATURE_SETS)} "
                "or a comma-separated list of metrics columns"
            )
        names = FEATURE_SETS[features]
    else:
        names = tuple(features)
    missing = sorted({name for table in runs.values() for name in names if name not in table})
    if missing:
        raise UserError(
            f"the runs' metrics have no column(s) {', '.join(missing)}; train with the weight_stats "
            "measures (measures.names) or add them with `groklab measure RUN_DIR --names weight_stats`"
        )
    return names


def _state_table(model: TrainingMap, runs: dict, detours: pd.DataFrame, column: str = "test_acc") -> pd.DataFrame:
    """Per state: occupancy, runs visiting, the mean of the convergence metric `column` (as test_acc), mean
    time (fraction of the run), the detour statistics and the raw feature means."""
    k = model.n_states_
    counts = state_occupancy(model.paths_, k, normalize=False)
    times, accs, states = [], [], []
    for seed, path in model.paths_.items():
        n = len(path)
        times.append(np.arange(n) / max(n - 1, 1))
        accs.append(runs[seed][column].to_numpy(dtype=float)[:n] if column in runs[seed] else np.full(n, np.nan))
        states.append(path)
    states = np.concatenate(states)
    mean_time = pd.Series(np.concatenate(times)).groupby(states).mean().reindex(range(k))
    test_acc = pd.Series(np.concatenate(accs)).groupby(states).mean().reindex(range(k))
    table = pd.DataFrame(
        {
            "state": range(k),
            "occupancy": counts.sum().to_numpy() / counts.to_numpy().sum(),
            "n_runs": (counts > 0).sum().to_numpy(),
            "mean_time": mean_time.to_numpy(),
            "test_acc": test_acc.to_numpy(),
        }
    )
    table = table.merge(
        detours[["state", "detour", "obligatory", "r", "p", "p_holm", "mean_conv_visit", "mean_conv_not"]],
        on="state",
        how="left",
    )  # a state the test could not score stays
    means = model.means_original_.add_prefix("mean_").reset_index(drop=True)
    return pd.concat([table, means], axis=1)


def _transition_features(model: TrainingMap, runs: dict, transitions: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for i, j in transitions.loc[transitions["from"] != transitions["to"], ["from", "to"]].itertuples(index=False):
        table = transition_features(model, runs, int(i), int(j))
        table.insert(0, "to", int(j))
        table.insert(0, "from", int(i))
        table["n_occurrences"] = table.attrs["n_occurrences"]
        frames.append(table)
    columns = ["from", "to", "feature", "mean_gradient", "abs_rank", "mean_shift", "n_occurrences"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _paths_table(model: TrainingMap, runs: dict) -> pd.DataFrame:
    frames = []
    for seed, path in model.paths_.items():
        table = runs[seed].sort_values("step").reset_index(drop=True).head(len(path))
        frame = pd.DataFrame(
            {"seed": seed, "checkpoint": np.arange(len(path)), "step": table["step"].to_numpy(), "state": path}
        )
        if "test_acc" in table:
            frame["test_acc"] = table["test_acc"].to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _report(
    sweep_dir: SweepDir, model: TrainingMap, tables: dict, threshold: float, column: str, skipped: dict, png: bool
):
    """The HTML page and a function that draws the map (and the figures) into a directory."""
    from groklab.report.maps import (
        map_layout,
        render_map_page,
        robustness_figure,
        save_figures_static,
        save_map_static,
        sweep_figures,
    )

    states, detours, convergence = tables["states"], tables["detours"], tables["convergence"]
    layout = map_layout(states, tables["transitions"], len(model.paths_))
    figures = sweep_figures(model.selection_, tables["paths"], convergence, detours, model.means_original_)
    chosen = model.selection_.set_index("n_states").loc[model.n_states_]
    found = detours[detours["detour"]]
    conv = convergence[~convergence["censored"]]["index"]
    crossing = "<=" if column is not None and column.endswith("_loss") else ">="
    config = sweep_dir.spec["config"]
    rows = [
        ("sweep", f"{sweep_dir.path} ({config.get('name')}; {config.get('source', '')})"),
        (
            "runs",
            f"{len(model.paths_)} used (train {len(model.train_runs_)}, held out {len(model.test_runs_)})"
            + (f"; skipped {', '.join(f'{s} ({why})' for s, why in skipped.items())}" if skipped else ""),
        ),
        (
            "features",
            ", ".join(model.features_)
            + (f" (dropped as constant: {', '.join(model.dropped_features_)})" if model.dropped_features_ else ""),
        ),
        (
            "states",
            f"K = {model.n_states_}"
            + (f", chosen by held-out {model.n_states.upper()}" if isinstance(model.n_states, str) else "")
            + f", {model.covariance_type} covariance"
            + (f" (floor {model.covariance_floor:g} on its diagonal)" if model.covariance_floor else "")
            + f"; EM {'converged' if chosen['converged'] else 'did NOT converge (hit n_iter)'}",
        ),
        (
            "convergence",
            "no convergence metric in the runs (an imported series without evaluations: import it with "
            "--eval-text FILE for a held-out loss), so no detour test"
            if column is None
            else f"{column} {crossing} {threshold:.4g}: {len(conv)} of {len(convergence)} runs, median checkpoint "
            f"{conv.median():.0f}"
            if len(conv)
            else f"no run reached {column} {crossing} {threshold:.4g}",
        ),
        (
            "detours",
            "not tested (no convergence metric)"
            if column is None
            else "; ".join(
                f"state {int(r.state)} (r = {r.r:+.3f}, p = {r.p:.2g}, Holm p = {r.p_holm:.2g})"
                for r in found.itertuples()
            )
            or "none at Holm-adjusted p < 0.05",
        ),
        ("hmmlearn", model.hmmlearn_version_),
    ]
    sections = []
    if "robustness_fits" in tables:
        fits, summary = tables["robustness_fits"], tables["robustness_summary"]
        refits = fits[fits["fit"] > 0]
        k_counts = refits["n_states"].value_counts().sort_index()
        rows.append(
            (
                "robustness",
                f"{len(refits)} refits ({'resampled runs, ' if refits['bootstrap'].any() else ''}"
                f"other restart seeds): K chosen "
                + ", ".join(f"{k} in {n}" for k, n in k_counts.items())
                + f"; a detour at p < 0.05 in {int((refits['n_detours_raw'] > 0).sum())} of {len(refits)} fits "
                f"(Holm-adjusted: {int((refits['n_detours'] > 0).sum())})",
            )
        )
        figures.append(robustness_figure(fits, tables["robustness_states"], summary))
        sections = [
            ("Robustness: each state of this map over the refits (matched by its means)", summary),
            ("Robustness: the refits", fits),
        ]
    shown = detours[
        [
            "state",
            "n_visit",
            "n_not",
            "mean_conv_visit",
            "mean_conv_not",
            "r",
            "p",
            "p_holm",
            "detour",
            "coef_time",
            "p_time",
        ]
    ]
    top = tables["transition_features"]
    top = top[top["abs_rank"] <= 3] if len(top) else top
    page = render_map_page(
        f"groklab training map: {config.get('name')}",
        rows,
        layout,
        figures,
        [
            ("Detour test (per state; Holm-adjusted; joint time-in-state regression)", shown),
            ("Transitions (trimmed map)", tables["transitions"]),
            ("Features that drive each transition (top 3 by |gradient|)", top),
            ("Model selection", model.selection_),
            *sections,
        ],
    )

    def save_drawings(directory: Path) -> None:
        save_map_static(layout, directory)
        if png:
            save_figures_static(figures, directory / "figures")

    return page, save_drawings

"""A grid sweep drawn: each held-out task metric against the grid's first key (e.g. depth, Murty et al.'s
inverted U), one point per seed and the mean over seeds with its 95% bootstrap interval; the share of seeds
whose metric crosses the threshold, with its interval; and the convergence step the same way (e.g. Nanda
et al.'s train-fraction curve). The numbers come from sweep.grid_summary. Every sweep, with a grid or
not: every run's curves, a colour per grid point, and the share of runs converged by each step."""

from __future__ import annotations

import html as _html
import math
import warnings

import numpy as np
import pandas as pd
import plotly.offline

from groklab.dynamics.compare import PeakOf, describe_peak
from groklab.dynamics.phases import learnt_in_distribution, metric_columns
from groklab.dynamics.summary import is_structural
from groklab.report.figures import PALETTE, Figure, Panel, Trace
from groklab.report.html import CONFIG, STYLE, TABLE_STYLE, data_table, plotly_figure
from groklab.store.sweep_dir import point_label


def grid_figures(
    done: pd.DataFrame, summary: pd.DataFrame, keys: list[str], peaks: dict | None = None, cross: float = 0.8
) -> list[Figure]:
    """One figure per held-out task metric (final value; share of seeds crossing `cross`), x = keys[0],
    a colour per combination of the other keys; `done`: the sweep table's runs that ended (their points are
    the seeds drawn); `peaks`: sweep.grid_peaks, in the caption. Empty without a grid or held-out task metrics."""
    metrics = [c[: -len("_final_mean")] for c in summary if c.endswith("_final_mean") and c.startswith("gen_")]
    if not keys or not metrics:
        return []
    x_key, figures, peaks = keys[0], [], peaks or {}
    for metric in metrics:
        final, crossed = (
            Panel(f"{metric} at the end", xlabel=x_key, ylabel=metric),
            Panel(
                f"seeds crossing {cross:g} (dashed: in-distribution learnt)",
                xlabel=x_key,
                ylabel="share of seeds",
            ),
        )
        for prefix, color, rows, seeds in _groups(done, summary, keys):
            if f"final_{metric}" in seeds:
                final.traces.append(_seeds(f"{prefix}each seed", seeds, x_key, f"final_{metric}", color))
            final.traces.append(_interval(f"{prefix}mean, 95% CI", rows, x_key, f"{metric}_final", "mean", color))
            if f"{metric}_final_learnt_mean" in rows:  # apart from the runs that never learn their training set
                given = _interval(f"{prefix}mean of id learnt", rows, x_key, f"{metric}_final_learnt", "mean", color)
                given.dash = True
                final.traces.append(given)
            crossed.traces.append(
                _interval(f"{prefix}share, 95% CI", rows, x_key, f"{metric}_crossed", f"{cross:g}", color)
            )
            if f"{metric}_id_learned_share" in rows:  # the other failure: never learning the in-distribution set
                learned = _interval(
                    f"{prefix}in-distribution learnt", rows, x_key, f"{metric}_id_learned", "share", color
                )
                learned.dash = True
                crossed.traces.append(learned)
        caption = (
            f"{metric} of every run that ended, against {x_key}: each seed's final value (points) and their mean "
            f"with its 95% percentile-bootstrap interval over seeds (dashed: the mean over the seeds that learnt the "
            f"in-distribution set alone); and the share of seeds whose {metric} reaches "
            f"{cross:g} at some evaluation, beside (dashed) the share whose in-distribution twin reaches 0.95 — a "
            f"run that never learns its training distribution fails differently from one that learns the linear "
            f"rule. Murty et al. 2023 find an inverted U over depth (best at 6 layers)."
        )
        if PeakOf(metric) in peaks:
            caption += f" Where the final mean peaks over {x_key}: {describe_peak(*peaks[PeakOf(metric)])}."
        if PeakOf(metric, cross) in peaks:
            caption += f" Where the share crossing {cross:g} peaks: {describe_peak(*peaks[PeakOf(metric, cross)])}."
        figures.append(Figure(f"grid_{metric}", f"{metric} across the grid", caption, [final, crossed]))
    return figures


def convergence_figures(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str], attrs: dict) -> list[Figure]:
    """The convergence step against keys[0] (e.g. Nanda et al.'s train fraction): each seed's step (runs that
    never converge drawn apart, at their last step: a lower bound), the mean over those that converge with its
    95% bootstrap interval, log scale; and the share of seeds that converge. `attrs`: the sweep table's metric
    and threshold. Empty without a grid or a convergence metric."""
    if not keys or "convergence_step_mean" not in summary:
        return []
    x_key = keys[0]
    metric, threshold = attrs.get("metric") or "test_acc", attrs.get("threshold")
    crossing = f"{metric} {'<=' if metric.endswith('_loss') else '>='} {threshold:g}"
    steps = Panel(f"first step with {crossing}", xlabel=x_key, ylabel="step", logy=True)
    share = Panel("seeds that converge", xlabel=x_key, ylabel="share of seeds")
    for prefix, color, rows, seeds in _groups(done, summary, keys):
        for name, runs, opacity in (
            ("each seed", seeds[seeds["converged"].eq(True)], 0.45),
            ("never converged (last step)", seeds[seeds["converged"].eq(False)], 0.2),
        ):
            if len(runs):
                steps.traces.append(_seeds(f"{prefix}{name}", runs, x_key, "convergence_step", color, opacity))
        name = f"{prefix}mean of those that converge, 95% CI"
        steps.traces.append(_interval(name, rows, x_key, "convergence_step", "mean", color))
        share.traces.append(_interval(f"{prefix}share, 95% CI", rows, x_key, "converged", "share", color))
    caption = (
        f"The first evaluated step with {crossing} of every run that ended, against {x_key}: each seed (faint: runs "
        f"that never got there, at their last step, a lower bound) and the mean over the seeds that converge with "
        f"its 95% percentile-bootstrap interval; and the share of seeds that converge."
    ) + (
        " Nanda et al. 2023 (appendix) find the grokking step rising steeply as the fraction falls below ~0.4."
        if x_key == "task.frac_train"
        else ""
    )
    return [Figure("grid_convergence", "convergence across the grid", caption, [steps, share])]


def survival_figures(table: pd.DataFrame, keys: list[str], attrs: dict) -> list[Figure]:
    """The share of runs converged by each step, per grid point (Hu et al. report the distribution over seeds:
    median, spread, runs that never converge): the Kaplan–Meier estimate (`scipy.stats.ecdf` on censored data)
    with its 95% interval, every run with metrics counted — one that has not converged (yet: still running, or
    never by its end) is right-censored at its last step, marked there. `table`: the sweep table; `attrs` its
    metric and threshold. Empty without a convergence metric, and for held-out task metrics (a structural
    sweep's: its token-level test accuracy is not what the paper measures; grid_figures draws those)."""
    from scipy import stats

    if "convergence_step" not in table or is_structural(table):
        return []
    runs = table[table["convergence_step"].notna()]
    if runs.empty:
        return []
    metric, threshold = attrs.get("metric") or "test_acc", attrs.get("threshold")
    crossing = f"{metric} {'<=' if metric.endswith('_loss') else '>='} {threshold:g}"
    panel = Panel(f"runs with {crossing} by each step", ylabel="share of runs")
    groups = list(runs.groupby(keys, sort=True)) if keys else [((), runs)]
    for i, (point, rows) in enumerate(groups):
        point = point if isinstance(point, tuple) else (point,)
        label, color = point_label(zip(keys, point)), PALETTE[i % len(PALETTE)]
        prefix = f"{label}: " if label else ""
        done = rows["converged"].eq(True).to_numpy()
        steps = rows["convergence_step"].to_numpy(dtype=float)
        km = stats.ecdf(stats.CensoredData(uncensored=steps[done], right=steps[~done])).cdf
        with warnings.catch_warnings():  # Greenwood's interval is undefined once every run has converged
            warnings.filterwarnings("ignore", "The confidence interval is undefined", RuntimeWarning)
            ci = km.confidence_interval(0.95)
        for name, curve, dash, width, legend in (
            (f"{prefix}share converged (n {len(rows)})", km.probabilities, False, 1.8, True),
            (f"{prefix}95% CI", ci.low.probabilities, True, 0.8, True),
            (f"{prefix}95% CI", ci.high.probabilities, True, 0.8, False),
        ):  # where the interval is undefined, it is the estimate itself
            x, y = _steps_of(km.quantiles, np.where(np.isnan(curve), km.probabilities, curve))
            panel.traces.append(Trace(name, x, y, color=color, dash=dash, width=width, legend=legend))
        if (~done).any():
            at = np.nan_to_num(km.evaluate(steps[~done]))
            panel.traces.append(
                Trace(f"{prefix}not converged (last step)", steps[~done], at, "markers", color=color, opacity=0.6)
            )
    caption = (
        f"The share of runs whose {crossing} by each step (Kaplan–Meier, with its 95% interval, dashed): a run "
        f"that has not got there — still running, or never by its last step — counts as converged later, if ever "
        f"(marked at its last step). Where the curve crosses 0.5 is the median convergence step over all runs."
    )
    return [Figure("convergence_over_seeds", "convergence over seeds", caption, [panel])]


def _steps_of(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A step function (0 before x[0], y[i] from x[i] on) as a line both renderers draw: every jump doubled."""
    xs = np.repeat(np.asarray(x, dtype=float), 2)
    ys = np.concatenate([[0.0], np.repeat(np.asarray(y, dtype=float), 2)[:-1]])
    return np.concatenate([[0.0], xs]), np.concatenate([[0.0], ys])


def structure_figures(done: pd.DataFrame, keys: list[str], found: dict) -> list[Figure]:
    """Each run's final t-score against its final generalization (Murty et al.: tree-structuredness goes with
    hierarchical generalization), a colour per grid point, the runs that never learnt the in-distribution set
    faint; `found`: sweep.structure_correlation, in the caption. Empty without it."""
    if not found:
        return []
    metric, (rho, p, n), within = found["metric"], found["all"], found["within"]
    panel = Panel(f"final t_score and {metric}, run by run", xlabel="final t_score", ylabel=metric)
    groups = list(done.groupby(keys, sort=True)) if keys else [((), done)]
    for i, (point, runs) in enumerate(groups):
        point = point if isinstance(point, tuple) else (point,)
        label = point_label(zip(keys, point)) or "every seed"
        learnt = learnt_in_distribution(runs, metric)
        color = PALETTE[i % len(PALETTE)]
        for name, rows, opacity in ((label, runs[learnt], 0.8), (f"{label}, never learnt", runs[~learnt], 0.25)):
            if len(rows):
                panel.traces.append(
                    Trace(name, rows["final_t_score"], rows[f"final_{metric}"], "markers", color=color, opacity=opacity)
                )
    caption = (
        f"Every run that ended: its final t-score (tree-structuredness of its representations) against its final "
        f"{metric}, a colour per grid point; faint, the runs that never learnt the in-distribution set (they fail "
        f"for another reason and are left out of the correlation). Spearman over the {n} others: "
        + ("not enough runs" if math.isnan(rho) else f"{rho:.2f} (p {p:.2g})")
        + (
            f"; within each grid point (centred on its mean): {within[0]:.2f} (p {within[1]:.2g})"
            if keys and not math.isnan(within[0])
            else ""
        )
        + "."
    )
    return [Figure("grid_structure", "tree-structuredness and generalization", caption, [panel])]


def curve_figures(curves: dict[str, list[pd.DataFrame]]) -> list[Figure]:
    """Every run's curves against step, a colour per grid point (`curves`: its label -> its runs' metrics
    tables, in grid order): the train (or in-distribution) metric and the held-out one (dynamics.phases.
    metric_columns: test accuracy, or the paper's generalization metric of a structural task). Empty when
    no run has metrics yet."""
    tables = [m for runs in curves.values() for m in runs if not m.empty]
    if not tables:
        return []
    columns = metric_columns(tables[0])
    held, train = columns["held_out"], columns["train"]
    panels = [Panel(f"{c} of every run", ylabel=c) for c in (train, held) if c is not None]
    for i, (label, runs) in enumerate(curves.items()):
        for j, metrics in enumerate(m for m in runs if not m.empty):
            for panel in panels:
                if panel.ylabel in metrics:
                    rows = metrics[["step", panel.ylabel]].dropna()
                    color = PALETTE[i % len(PALETTE)]
                    panel.traces.append(
                        Trace(label, rows["step"], rows[panel.ylabel], color=color, opacity=0.6, legend=j == 0)
                    )
    caption = (
        f"{held} (and {train}) of every run of the sweep against the training step, one line per run, a colour "
        "per grid point: when each seed generalizes, and whether it stays there."
    )
    return [Figure("grid_curves", "every run", caption, panels)]


def _groups(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str]):
    """Per combination of the grid's other keys (one line each): its legend prefix, colour, summary rows
    (sorted by keys[0]) and runs."""
    others = keys[1:]
    groups = list(summary.groupby(others, sort=True)) if others else [((), summary)]
    for i, (point, rows) in enumerate(groups):
        point = point if isinstance(point, tuple) else (point,)
        label = point_label(zip(others, point))
        seeds = done
        for k, v in zip(others, point):
            seeds = seeds[seeds[k] == v]
        yield f"{label}: " if label else "", PALETTE[i % len(PALETTE)], rows.sort_values(keys[0]), seeds


def _seeds(name: str, runs: pd.DataFrame, x_key: str, column: str, color: str, opacity: float = 0.45) -> Trace:
    return Trace(name, runs[x_key], runs[column], "markers", color=color, opacity=opacity)


def _interval(name: str, rows: pd.DataFrame, x_key: str, prefix: str, value: str, color: str) -> Trace:
    """grid_summary's `{prefix}_{value}` with its interval `{prefix}_ci_low` / `_ci_high` as error bars."""
    return Trace(name, rows[x_key], rows[f"{prefix}_{value}"], color=color, error=_ci(rows, prefix))


def _ci(rows: pd.DataFrame, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return rows[f"{prefix}_ci_low"].to_numpy(dtype=float), rows[f"{prefix}_ci_high"].to_numpy(dtype=float)


def render_grid_page(title: str, figures: list[Figure], summary: pd.DataFrame, table: pd.DataFrame) -> str:
    """The page: the figures, the per-point summary, then every run."""
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_html.escape(title)}</title>",
        f"<style>{STYLE}{TABLE_STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
    ]
    for figure in figures:
        body = plotly_figure(figure).to_html(full_html=False, include_plotlyjs=False, div_id=figure.key, config=CONFIG)
        parts.append(
            f"<section><h2>{_html.escape(figure.title)}</h2><p class=caption>{_html.escape(figure.caption)}</p>"
            f"<div class=figure>{body}</div></section>"
        )
    for heading, frame in (("Per grid point", summary), ("Runs", table)):
        parts.append(f"<section><h2>{heading}</h2>{data_table(frame)}</section>")
    return "\n".join(parts) + "</body></html>"

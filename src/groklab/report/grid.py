"""A grid sweep drawn: each held-out task metric against the grid's first key (e.g. depth, Murty et al.'s
inverted U), one point per seed and the mean over seeds with its 95% bootstrap interval; the share of seeds
whose metric crosses the threshold, with its interval; and the convergence step the same way (e.g. Nanda
et al.'s train-fraction curve). The numbers come from sweep.grid_summary."""

from __future__ import annotations

import html as _html

import numpy as np
import pandas as pd
import plotly.offline

from groklab.report.figures import PALETTE, Figure, Panel, Trace
from groklab.report.html import CONFIG, STYLE, TABLE_STYLE, data_table, plotly_figure


def grid_figures(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str], cross: float = 0.8) -> list[Figure]:
    """One figure per held-out task metric (final value; share of seeds crossing `cross`), x = keys[0],
    a colour per combination of the other keys; `done`: the sweep table's runs that ended (their points are
    the seeds drawn). Empty without a grid or held-out task metrics."""
    metrics = [c[: -len("_final_mean")] for c in summary if c.endswith("_final_mean") and c.startswith("gen_")]
    if not keys or not metrics:
        return []
    x_key, others = keys[0], keys[1:]
    groups = list(summary.groupby(others, sort=True)) if others else [((), summary)]
    figures = []
    for metric in metrics:
        final, crossed = (
            Panel(f"{metric} at the end", xlabel=x_key, ylabel=metric),
            Panel(f"seeds crossing {cross:g} at some point", xlabel=x_key, ylabel="share of seeds"),
        )
        for i, (point, rows) in enumerate(groups):
            rows = rows.sort_values(x_key)
            point = point if isinstance(point, tuple) else (point,)
            label = ", ".join(f"{k}={v}" for k, v in zip(others, point))
            color = PALETTE[i % len(PALETTE)]
            prefix = f"{label}: " if label else ""
            seeds = done
            for k, v in zip(others, point):
                seeds = seeds[seeds[k] == v]
            if f"final_{metric}" in seeds:
                final.traces.append(
                    Trace(
                        f"{prefix}each seed",
                        seeds[x_key],
                        seeds[f"final_{metric}"],
                        "markers",
                        color=color,
                        opacity=0.45,
                    )
                )
            m = f"{metric}_final"
            final.traces.append(
                Trace(f"{prefix}mean, 95% CI", rows[x_key], rows[f"{m}_mean"], color=color, error=_ci(rows, m))
            )
            c = f"{metric}_crossed"
            crossed.traces.append(
                Trace(f"{prefix}share, 95% CI", rows[x_key], rows[f"{c}_{cross:g}"], color=color, error=_ci(rows, c))
            )
        caption = (
            f"{metric} of every run that ended, against {x_key}: each seed's final value (points) and their mean "
            f"with its 95% percentile-bootstrap interval over seeds; and the share of seeds whose {metric} reaches "
            f"{cross:g} at some evaluation. Murty et al. 2023 find an inverted U over depth (best at 6 layers)."
        )
        figures.append(Figure(f"grid_{metric}", f"{metric} across the grid", caption, [final, crossed]))
    return figures


def convergence_figures(done: pd.DataFrame, summary: pd.DataFrame, keys: list[str], attrs: dict) -> list[Figure]:
    """The convergence step against keys[0] (e.g. Nanda et al.'s train fraction): each seed's step (runs that
    never converge drawn apart, at their last step: a lower bound), the mean over those that converge with its
    95% bootstrap interval, log scale; and the share of seeds that converge. `attrs`: the sweep table's metric
    and threshold. Empty without a grid or a convergence metric."""
    if not keys or "convergence_step_mean" not in summary:
        return []
    x_key, others = keys[0], keys[1:]
    metric, threshold = attrs.get("metric") or "test_acc", attrs.get("threshold")
    crossing = f"{metric} {'<=' if metric.endswith('_loss') else '>='} {threshold:g}"
    steps = Panel(f"first step with {crossing}", xlabel=x_key, ylabel="step", logy=True)
    share = Panel("seeds that converge", xlabel=x_key, ylabel="share of seeds")
    groups = list(summary.groupby(others, sort=True)) if others else [((), summary)]
    for i, (point, rows) in enumerate(groups):
        rows = rows.sort_values(x_key)
        point = point if isinstance(point, tuple) else (point,)
        label = ", ".join(f"{k}={v}" for k, v in zip(others, point))
        color, prefix = PALETTE[i % len(PALETTE)], f"{label}: " if label else ""
        seeds = done
        for k, v in zip(others, point):
            seeds = seeds[seeds[k] == v]
        for name, runs, opacity in (
            ("each seed", seeds[seeds["converged"].eq(True)], 0.45),
            ("never converged (last step)", seeds[seeds["converged"].eq(False)], 0.2),
        ):
            if len(runs):
                steps.traces.append(
                    Trace(
                        f"{prefix}{name}",
                        runs[x_key],
                        runs["convergence_step"],
                        "markers",
                        color=color,
                        opacity=opacity,
                    )
                )
        steps.traces.append(
            Trace(
                f"{prefix}mean of those that converge, 95% CI",
                rows[x_key],
                rows["convergence_step_mean"],
                color=color,
                error=_ci(rows, "convergence_step"),
            )
        )
        share.traces.append(
            Trace(
                f"{prefix}share, 95% CI",
                rows[x_key],
                rows["converged_share"],
                color=color,
                error=_ci(rows, "converged"),
            )
        )
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

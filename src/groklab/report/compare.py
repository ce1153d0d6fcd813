"""The comparison page of `groklab compare`: populations side by side — the verdict table, each run's
curves in normalized time, the stage statistics with their bootstrap intervals, and the training maps."""

from __future__ import annotations

import html as _html
import warnings

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go

from groklab.dynamics.compare import CURVES, normalized_curves
from groklab.report.figures import PALETTE, Figure, Panel, Trace
from groklab.report.html import CONFIG, STYLE, TABLE_STYLE, data_table, plotly_figure
from groklab.report.maps import map_layout, map_plotly

GRID = np.linspace(0, 3, 121)  # normalized time of the population medians
PANELS = {
    "held_out": ("held-out metric", "accuracy"),
    "structure": ("structure measure", "structure"),
    "llc": ("LLC / its largest value", "LLC (normalized)"),
    "norm": ("weight norm / its value at generalization", "norm (normalized)"),
}
STATS = (
    ("generalizes", "runs that generalize (share)"),
    ("three_stages", "runs with all three stages (share)"),
    ("memorization", "memorized at (t)"),
    ("delay", "delay (memorized to generalized, in t)"),
    ("cleanup", "cleanup (generalized to its end, in t)"),
    ("structure_lead", "structure lead (fraction of delay)"),
    ("llc_lead", "LLC lead (fraction of delay)"),
    ("norm_fall", "weight-norm fall after generalization"),
)


def curves_figure(populations) -> Figure:
    """One panel per lens; x = step / the run's generalization step (1 = generalization). Thin lines: runs;
    thick: the population's median over the runs that have the measure (where at least half of them reach that t)."""
    panels = {
        name: Panel(title, xlabel="t = step / generalization step", ylabel=ylabel)
        for name, (title, ylabel) in PANELS.items()
    }
    for i, pop in enumerate(populations):
        color = PALETTE[i % len(PALETTE)]
        curves = [
            normalized_curves(pop.runs[int(r.seed)], int(r.generalized_step))
            for r in pop.table.itertuples()
            if r.generalizes
        ]
        for name, panel in panels.items():
            grid = []
            for c in curves:
                rows = c.dropna(subset=[name])
                if len(rows) < 2:
                    continue
                panel.traces.append(
                    Trace(
                        f"{pop.label} runs", rows["t"], rows[name], color=color, width=0.8, opacity=0.35, legend=False
                    )
                )
                grid.append(np.interp(GRID, rows["t"], rows[name], left=np.nan, right=np.nan))
            if len(grid) >= 2:
                grid = np.array(grid)
                enough = np.sum(~np.isnan(grid), axis=0) >= max(2, len(grid) / 2)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # columns no run reaches: all NaN
                    median = np.where(enough, np.nanmedian(grid, axis=0), np.nan)
                panel.traces.append(Trace(f"{pop.label} (median)", GRID, median, color=color, width=3.5))
    caption = (
        "Every run that generalizes, against normalized time t = step / its generalization step (the held-out "
        "metric crosses halfway to its maximum at t = 1), so tasks of any length line up. Thin: runs; thick: each "
        "population's median. A lens whose measure leads generalization moves before t = 1."
    )
    return Figure(
        "normalized_curves", "Curves in normalized time", caption, [panel for panel in panels.values() if panel.traces]
    )


def stats_figure(populations) -> go.Figure:
    """Forest plot: each quantity's mean and 95% bootstrap interval, one colour per population."""
    fig = go.Figure()
    labels = [label for _, label in STATS]
    for i, pop in enumerate(populations):
        s = pop.stats.set_index("quantity")
        mean = [s.loc[q, "mean"] for q, _ in STATS]
        fig.add_trace(
            go.Scatter(
                x=mean,
                y=labels,
                mode="markers",
                name=pop.label,
                marker={"size": 10, "color": PALETTE[i % len(PALETTE)]},
                offsetgroup=str(i),
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [s.loc[q, "ci_high"] - s.loc[q, "mean"] for q, _ in STATS],
                    "arrayminus": [s.loc[q, "mean"] - s.loc[q, "ci_low"] for q, _ in STATS],
                },
                hovertext=[
                    f"{pop.label}: {s.loc[q, 'mean']:.3f} [{s.loc[q, 'ci_low']:.3f}, {s.loc[q, 'ci_high']:.3f}], "
                    f"n = {int(s.loc[q, 'n'])}"
                    for q, _ in STATS
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        height=120 + 45 * len(STATS),
        template="plotly_white",
        scattermode="group",
        margin={"l": 300, "r": 20, "t": 20, "b": 50},
        xaxis={"title": "mean, 95% bootstrap interval"},
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": -0.15},
    )
    fig.add_vline(x=0, line_color="#aaa", line_width=1)
    return fig


def _population_rows(pop) -> list[tuple[str, str]]:
    config = pop.sweep.spec["config"]
    done = len(pop.runs)
    return [
        ("sweep", f"{pop.sweep.path}" + (f" at {pop.point}" if pop.point else "")),
        ("config", f"{config.get('name')}: {config.get('source', '')}"),
        ("runs", f"{done} done of {len(pop.sweep.seeds)} seeds; {int(pop.table['generalizes'].sum())} generalize"),
        (
            "lenses",
            ", ".join(f"{k} = {v}" for k, v in pop.columns.items() if v)
            + "".join(f"; no {k}" for k, v in pop.columns.items() if not v and k in CURVES),
        ),
        ("training map", pop.map_note),
    ]


def render_compare_page(populations, verdicts: pd.DataFrame, min_runs: int) -> str:
    title = "groklab compare: " + " vs ".join(p.label for p in populations)
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_html.escape(title)}</title>",
        f"<style>{STYLE}{TABLE_STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
        "<section><h2>Verdict, claim by claim</h2><p class=caption>Each population: yes / no when the 95% bootstrap "
        "interval over seeds lies on one side of the claim's threshold, unclear when it straddles it, n/a with fewer "
        f"than {min_runs} runs that have the quantity. Same: both yes or both no; different: one yes and one no; "
        "not enough runs: any other case.</p>",
        data_table(verdicts, verdict=True),
        "</section>",
    ]
    for pop in populations:
        parts.append(f"<h2>{_html.escape(pop.label)}</h2><table class=header>")
        parts += [f"<tr><td>{_html.escape(k)}</td><td>{_html.escape(v)}</td></tr>" for k, v in _population_rows(pop)]
        parts.append("</table>")
    curves = curves_figure(populations)
    if curves.panels:
        fig = plotly_figure(curves)
        fig.update_layout(height=420)
        body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=curves.key, config=CONFIG)
        parts.append(
            f"<section><h2>{curves.title}</h2><p class=caption>{_html.escape(curves.caption)}</p>"
            f"<div class=figure>{body}</div></section>"
        )
    stats = stats_figure(populations).to_html(
        full_html=False, include_plotlyjs=False, div_id="stage_statistics", config=CONFIG
    )
    parts.append(
        "<section><h2>Stages per population</h2><p class=caption>Means over the runs (shares over all runs; "
        "durations, leads and the norm's fall over the runs that generalize) with 95% percentile-bootstrap "
        "intervals over seeds. t: normalized time (1 = generalization); a lead is the time from the measure's "
        "onset to generalization as a fraction of the delay from memorization to generalization.</p>"
        f"<div class=figure>{stats}</div>"
    )
    wide = pd.concat(
        [
            p.stats.set_index("quantity")
            .apply(
                lambda r: (
                    f"{r['mean']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}] (n = {int(r['n'])})" if r["n"] else "-"
                ),
                axis=1,
            )
            .rename(p.label)
            for p in populations
        ],
        axis=1,
    ).reset_index()
    parts.append(data_table(wide) + "</section>")
    parts.append(
        "<section><h2>Training maps</h2><p class=caption>Each population's HMM training map (Hu et al. 2023): "
        "nodes are latent states left to right in training time, sized by occupancy, coloured by the mean "
        "held-out metric; a red ring marks a detour (a state whose visitors converge later).</p><div class=maps>"
    )
    for i, pop in enumerate(populations):
        if pop.map is None:
            parts.append(f"<div><h3>{_html.escape(pop.label)}</h3><p>{_html.escape(pop.map_note)}</p></div>")
            continue
        layout = map_layout(pop.map["states"], pop.map["transitions"], len(pop.map["convergence"]))
        div = map_plotly(layout).to_html(
            full_html=False, include_plotlyjs=False, div_id=f"training_map_{i}", config=CONFIG
        )
        parts.append(f"<div><h3>{_html.escape(pop.label)}</h3><div class=figure>{div}</div></div>")
    parts.append("</div></section>")
    parts.append(
        "<section><h2>Runs</h2>"
        + "".join(f"<h3>{_html.escape(p.label)}</h3>" + data_table(p.table) for p in populations)
        + "</section></body></html>"
    )
    return "\n".join(parts)

"""The training map of a sweep drawn: the latent-state graph (SVG/PNG with matplotlib, interactive with
plotly) and the figures of the sweep's HTML report (model selection, state paths, detours, state means).

The layout reads left to right in training time: a state's x is the mean fraction of its run that has
passed when a checkpoint sits in it. The states every run visits lie on the middle line; the states
some runs skip branch off above and below it (in order of occupancy), so the common route runs
straight across and the optional ones (detours, shortcuts) stand apart. Nodes are sized by occupancy and coloured by mean test accuracy; edges
are the transitions that occur in the decoded paths (trimmed map, Hu et al. §5.1), as wide as the number
of runs that take them. Self-loops are left out of the drawing (their probabilities are in the tables).
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from groklab.dynamics import occupancy_over_time
from groklab.report.figures import PALETTE, Figure, Panel, Trace
from groklab.report.html import plotly_figure, render_html

DETOUR_COLOR = "#d62728"


@dataclass
class MapLayout:
    """Everything the two renderers need, computed once."""

    states: pd.DataFrame  # state, x, y, occupancy, n_runs, test_acc, detour, r, p_holm
    edges: pd.DataFrame  # from, to, runs, count, prob (no self-loops)
    n_runs: int


def map_layout(states: pd.DataFrame, transitions: pd.DataFrame, n_runs: int) -> MapLayout:
    """`states` needs state, mean_time (0..1), occupancy, n_runs, test_acc and detour; `transitions`
    from, to, runs, count, prob. Returns the positioned nodes and the drawable edges."""
    states = states.copy()
    states["x"] = states["mean_time"].fillna(1.0)
    states["y"] = 0.0
    taken: dict[int, list[float]] = {}  # lane -> x of the states placed on it
    states["everyone"] = states["n_runs"] >= n_runs  # states every run visits form the main line
    for state in states.sort_values(["everyone", "occupancy", "state"], ascending=[False, False, True])["state"]:
        row = states.loc[states["state"] == state].iloc[0]
        x = float(row["x"])
        for lane in _lanes():
            if lane == 0 and not row["everyone"]:  # a state some runs skip branches off it
                continue
            if all(abs(x - other) > 0.12 for other in taken.get(lane, [])):
                taken.setdefault(lane, []).append(x)
                states.loc[states["state"] == state, "y"] = float(lane)
                break
    edges = transitions[transitions["from"] != transitions["to"]].reset_index(drop=True)
    return MapLayout(states.reset_index(drop=True), edges, n_runs)


def _lanes():
    lane = 0
    while True:
        yield lane
        if lane > 0:
            yield -lane
        lane += 1


def _node_sizes(occupancy: pd.Series, smallest: float, largest: float) -> np.ndarray:
    share = np.sqrt(np.asarray(occupancy, dtype=float) / max(float(occupancy.max()), 1e-12))
    return smallest + (largest - smallest) * share


def _label(row) -> str:
    acc = "n/a" if pd.isna(row["test_acc"]) else f"{row['test_acc']:.2f}"
    return (
        f"state {int(row['state'])}<br>occupancy {row['occupancy']:.1%}<br>runs visiting {int(row['n_runs'])}"
        f"<br>mean test acc {acc}" + ("<br><b>detour</b>" if row["detour"] else "")
    )


def save_map_static(layout: MapLayout, directory: Path, stem: str = "training_map") -> list[Path]:
    """The map as DIR/STEM.png and DIR/STEM.svg (matplotlib, via networkx's drawing helpers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = nx.DiGraph()
    for row in layout.states.itertuples():
        graph.add_node(int(row.state))
    for edge in layout.edges.itertuples():
        graph.add_edge(int(edge[1]), int(edge[2]), runs=int(edge.runs))
    pos = {int(r.state): (float(r.x), float(r.y)) for r in layout.states.itertuples()}
    fig, ax = plt.subplots(figsize=(9, 5))
    cmap = plt.get_cmap("viridis")
    acc = layout.states["test_acc"].to_numpy(dtype=float)
    colors = [cmap(a) if np.isfinite(a) else (0.8, 0.8, 0.8, 1) for a in acc]
    sizes = _node_sizes(layout.states["occupancy"], 250, 2600)
    rims = [DETOUR_COLOR if d else "#333333" for d in layout.states["detour"]]
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=list(layout.states["state"].astype(int)),
        node_size=sizes,
        node_color=colors,
        edgecolors=rims,
        linewidths=[3 if d else 1 for d in layout.states["detour"]],
        ax=ax,
    )
    nx.draw_networkx_labels(graph, pos, font_color="white", font_weight="bold", ax=ax)
    if len(layout.edges):
        widths = [0.8 + 5 * graph.edges[e]["runs"] / max(layout.n_runs, 1) for e in graph.edges]
        size_of = dict(zip(layout.states["state"].astype(int), sizes))
        for edge, width in zip(graph.edges, widths):
            nx.draw_networkx_edges(
                graph,
                pos,
                edgelist=[edge],
                width=width,
                arrowsize=14,
                edge_color="#555555",
                connectionstyle="arc3,rad=0.15",
                node_size=[size_of[edge[0]], size_of[edge[1]]],
                nodelist=list(edge),
                ax=ax,
            )
        nx.draw_networkx_edge_labels(
            graph,
            pos,
            edge_labels={e: graph.edges[e]["runs"] for e in graph.edges},
            font_size=7,
            label_pos=0.45,
            connectionstyle="arc3,rad=0.15",
            ax=ax,
        )
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(mappable, ax=ax, label="mean test accuracy in the state", shrink=0.8)
    ax.set_xlabel("mean fraction of training elapsed in the state")
    ax.set_title(
        f"training map: {len(layout.states)} states, {layout.n_runs} runs "
        "(node area ~ occupancy; edge labels: runs taking it; red rim: detour)",
        fontsize=9,
    )
    ax.tick_params(left=False, labelleft=False, bottom=True, labelbottom=True)
    ys = layout.states["y"]
    ax.set_ylim(ys.min() - 0.8, ys.max() + 0.8)
    ax.set_xlim(-0.08, 1.08)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def map_plotly(layout: MapLayout):
    """The same map, interactive: hover a node for its statistics, an edge's midpoint for its runs."""
    import plotly.graph_objects as go

    pos = {int(r.state): (float(r.x), float(r.y)) for r in layout.states.itertuples()}
    fig = go.Figure()
    for edge in layout.edges.itertuples():
        (x0, y0), (x1, y1) = pos[int(edge[1])], pos[int(edge[2])]
        bend = 0.08 * np.array([-(y1 - y0), x1 - x0])  # curve to the left, so i->j and j->i stay apart
        mx, my = (x0 + x1) / 2 + bend[0], (y0 + y1) / 2 + bend[1]
        fig.add_annotation(
            x=x1,
            y=y1,
            ax=mx,
            ay=my,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=2,
            arrowsize=1,
            standoff=18,
            arrowwidth=0.8 + 5 * edge.runs / max(layout.n_runs, 1),
            arrowcolor="#666",
        )
        fig.add_trace(
            go.Scatter(
                x=[x0, mx],
                y=[y0, my],
                mode="lines",
                showlegend=False,
                hoverinfo="skip",
                line={"color": "#666", "width": 0.8 + 5 * edge.runs / max(layout.n_runs, 1)},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[mx],
                y=[my],
                mode="markers+text",
                text=[str(int(edge.runs))],
                textposition="top center",
                marker={"size": 4, "color": "#666"},
                showlegend=False,
                hovertext=f"{int(edge[1])} → {int(edge[2])}: {int(edge.runs)} runs, "
                f"{int(edge.count)} transitions, p = {edge.prob:.3f}",
                hoverinfo="text",
            )
        )
    s = layout.states
    fig.add_trace(
        go.Scatter(
            x=s["x"],
            y=s["y"],
            mode="markers+text",
            text=[str(int(k)) for k in s["state"]],
            showlegend=False,
            textfont={"color": "white", "size": 14},
            hovertext=[_label(row) for _, row in s.iterrows()],
            hoverinfo="text",
            marker={
                "size": _node_sizes(s["occupancy"], 22, 70),
                "color": s["test_acc"],
                "colorscale": "Viridis",
                "cmin": 0,
                "cmax": 1,
                "colorbar": {"title": {"text": "mean test acc"}},
                "line": {
                    "color": [DETOUR_COLOR if d else "#333" for d in s["detour"]],
                    "width": [4 if d else 1 for d in s["detour"]],
                },
            },
        )
    )
    fig.update_layout(
        height=460,
        template="plotly_white",
        margin={"l": 30, "r": 20, "t": 30, "b": 50},
        xaxis={"title": "mean fraction of training elapsed in the state", "range": [-0.08, 1.08]},
        yaxis={"visible": False, "range": [s["y"].min() - 0.8, s["y"].max() + 0.8]},
    )
    return fig


def sweep_figures(
    selection: pd.DataFrame, paths: pd.DataFrame, convergence: pd.DataFrame, detours: pd.DataFrame, means: pd.DataFrame
) -> list[Figure]:
    """Model selection, the state path of every run (slowest at the top), the share of runs in each state
    over time, convergence of visitors vs others per state, and the state means of the features."""
    figures = [
        Figure(
            "model_selection",
            "Model selection",
            "Held-out AIC and BIC of the best restart for each number of states K (lower is better); "
            "the chosen K is where the criterion is smallest.",
            [
                Panel(
                    "criteria",
                    [
                        Trace("BIC", selection["n_states"], selection["bic"]),
                        Trace("AIC", selection["n_states"], selection["aic"], dash=True),
                    ],
                    xlabel="states K",
                    ylabel="criterion",
                )
            ],
        )
    ]
    order = convergence.sort_values(["index", "seed"])["seed"].tolist()
    grid = paths.pivot(index="seed", columns="checkpoint", values="state").reindex(order)
    k = int(paths["state"].max()) + 1
    colorscale = [
        [edge, PALETTE[int(min(edge * k, k - 1e-9)) % len(PALETTE)]] for i in range(k) for edge in (i / k, (i + 1) / k)
    ]
    figures.append(
        Figure(
            "state_paths",
            "Latent state of every run at every checkpoint",
            "One row per seed, the fastest-converging at the bottom; colour = Viterbi state.",
            [
                Panel(
                    "paths",
                    heatmap={
                        "z": grid.to_numpy(dtype=float),
                        "x": list(grid.columns),
                        "y": [f"seed {s}" for s in grid.index],
                        "colorbar": "state",
                        "zrange": (-0.5, k - 0.5),
                        "colorscale": colorscale,
                    },
                    xlabel="checkpoint",
                    ylabel="",
                )
            ],
        )
    )
    by_seed = paths.sort_values(["seed", "checkpoint"]).groupby("seed")["state"]
    share = occupancy_over_time({seed: states.to_numpy() for seed, states in by_seed}, k)
    figures.append(
        Figure(
            "state_occupancy",
            "When runs are in each state",
            "Share of the runs (of those still running) in each state at every checkpoint. A state occupied at "
            "two times, e.g. at the start and again late in training, has a mean test accuracy that mixes both.",
            [
                Panel(
                    "occupancy",
                    [
                        Trace(f"state {s}", share.index, share[s], color=PALETTE[s % len(PALETTE)])
                        for s in share.columns
                    ],
                    xlabel="checkpoint",
                    ylabel="share of runs",
                )
            ],
        )
    )
    tested = detours.dropna(subset=["mean_conv_visit", "mean_conv_not"])
    if len(tested):
        labels = [f"state {int(s)}" for s in tested["state"]]
        figures.append(
            Figure(
                "detours",
                "Convergence of runs that visit each state and of runs that do not",
                "Mean convergence time (checkpoint index) of the runs whose path enters the state and of "
                "the others; states every run visits (obligatory) are left out.",
                [
                    Panel(
                        "convergence",
                        [
                            Trace("visit", labels, tested["mean_conv_visit"], kind="bar"),
                            Trace("do not visit", labels, tested["mean_conv_not"], kind="bar"),
                        ],
                        xlabel="state",
                        ylabel="mean convergence checkpoint",
                        grouped=True,
                    )
                ],
            )
        )
    z = means.to_numpy(dtype=float)
    figures.append(
        Figure(
            "state_means",
            "What each state looks like",
            "Mean of each feature over the checkpoints decoded to the state, standardised across states "
            "(raw values in states.csv).",
            [
                Panel(
                    "means",
                    heatmap={
                        "z": (z - z.mean(axis=0)) / np.where(z.std(axis=0) > 0, z.std(axis=0), 1),
                        "x": list(means.columns),
                        "y": [f"state {s}" for s in means.index],
                        "colorbar": "z across states",
                    },
                    xlabel="feature",
                    ylabel="",
                )
            ],
        )
    )
    return figures


def robustness_figure(fits: pd.DataFrame, states: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """How stable the map is over refits (dynamics.robustness): the share of refits choosing each K, how often
    each state of this map is matched to a detour (p < 0.05 and r > 0; Holm-adjusted), and r of its matched
    state in every refit."""
    refits = fits[fits["fit"] > 0]
    shares = refits["n_states"].value_counts(normalize=True).sort_index()
    labels = [f"state {int(s)}" for s in summary["reference_state"]]
    return Figure(
        "robustness",
        "How robust is the map? Model selection and detours over refits",
        f"{len(refits)} refits with other restart seeds (and resampled runs, if asked). Left: the K each "
        "chose. Middle: the share of refits in which this map's state, matched by its means, is a detour. "
        "Right: the detour test's r of the matched state in each refit.",
        [
            Panel(
                "K chosen",
                [Trace("refits", list(shares.index), list(shares.to_numpy()), kind="bar")],
                xlabel="states K",
                ylabel="share of refits",
            ),
            Panel(
                "detour frequency",
                [
                    Trace("p < 0.05, r > 0", labels, summary["detour_raw"], kind="bar"),
                    Trace("Holm-adjusted", labels, summary["detour"], kind="bar"),
                ],
                xlabel="state of this map",
                ylabel="share of refits",
                grouped=True,
            ),
            Panel(
                "r of the matched state",
                [
                    Trace(f"state {int(state)}", group["fit"], group["r"], kind="markers", opacity=0.8)
                    for state, group in states[states["fit"] > 0]
                    .dropna(subset=["reference_state"])
                    .groupby("reference_state")
                ],
                xlabel="refit",
                ylabel="r (visit vs convergence time)",
            ),
        ],
    )


def render_map_page(
    title: str,
    rows: list[tuple[str, str]],
    layout: MapLayout,
    figures: list[Figure],
    tables: list[tuple[str, pd.DataFrame]],
) -> str:
    """The sweep's HTML page: header, the map, the figures, then the tables."""
    header = {"title": title, "banner": "", "verdict": "", "rows": rows}
    page = render_html(title, [header], [])
    body = map_plotly(layout).to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id="training_map",
        config={"displaylogo": False, "toImageButtonOptions": {"format": "svg"}},
    )
    parts = [
        f"<section><h2>Training map</h2><p class=caption>{_html.escape(__doc__.split(chr(10) + chr(10))[1])}</p>"
        f"<div class=figure>{body}</div></section>"
    ]
    for fig in figures:
        div = plotly_figure(fig).to_html(
            full_html=False, include_plotlyjs=False, div_id=fig.key, config={"displaylogo": False}
        )
        parts.append(
            f"<section><h2>{_html.escape(fig.title)}</h2><p class=caption>{_html.escape(fig.caption)}</p>"
            f"<div class=figure>{div}</div></section>"
        )
    for name, table in tables:
        parts.append(
            f"<section><h2>{_html.escape(name)}</h2>"
            + table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="data")
            + "</section>"
        )
    style = (
        "<style>table.data{border-collapse:collapse;font-size:.9em}table.data td,table.data th{padding:3px 10px;"
        "border-bottom:1px solid #eee;text-align:right}</style>"
    )
    return page.replace("</body></html>", style + "\n".join(parts) + "</body></html>")


def save_figures_static(figures: list[Figure], directory: Path) -> list[Path]:
    from groklab.report.static import save_static

    return [path for fig in figures for path in save_static(fig, directory)]


__all__ = ["MapLayout", "map_layout", "map_plotly", "render_map_page", "save_map_static", "sweep_figures"]

"""Figures as one self-contained, interactive HTML page: plotly, with its JavaScript inlined once,
so the file works offline with no server (zoom, hover, toggle traces from the legend)."""

from __future__ import annotations

import html as _html

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from groklab.report.figures import PALETTE, PHASE_COLORS, Figure, bar_slots

CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 24px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin: 32px 0 4px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.verdict { font-size: 1.2em; margin: 8px 0 16px; } .caption { color: #555; margin: 4px 0 8px; max-width: 1000px; }
.banner { background: #fde2e1; border: 1px solid #e0a0a0; padding: 10px 14px; border-radius: 6px; font-weight: 600; }
table.header { border-collapse: collapse; } table.header td { padding: 3px 12px 3px 0; vertical-align: top; }
table.header td:first-child { color: #666; white-space: nowrap; } .figure { min-height: 420px; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; border-radius: 3px; }
"""


TABLE_STYLE = (
    "table.data{border-collapse:collapse;font-size:.92em;margin:8px 0}table.data td,table.data th{padding:4px 10px;"
    "border-bottom:1px solid #eee;text-align:left;vertical-align:top}.same{color:#2a7d2a;font-weight:600}"
    ".different{color:#b22;font-weight:600}.notenough{color:#777}.maps{display:flex;flex-wrap:wrap;gap:12px}"
    ".maps>div{flex:1 1 560px}"
)


def data_table(frame: pd.DataFrame, verdict: bool = False) -> str:
    """An HTML table of the frame (floats to 4 significant digits; `verdict`: colour the verdict column)."""
    head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            css = (
                f" class={value.replace(' ', '').replace('notenoughruns', 'notenough')}"
                if verdict and column == "verdict"
                else ""
            )
            cells.append(f"<td{css}>{_html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=data><tr>{head}</tr>{''.join(rows)}</table>"


def plotly_figure(fig: Figure) -> go.Figure:
    n = len(fig.panels)
    out = make_subplots(
        rows=1, cols=n, subplot_titles=[p.title for p in fig.panels], horizontal_spacing=0.08 if n > 1 else 0
    )
    colors: dict[str, str] = {}
    shown: set[str] = set()
    for col, panel in enumerate(fig.panels, start=1):
        for band in panel.bands:
            x0, x1, name = band
            out.add_vrect(
                x0=x0,
                x1=x1,
                fillcolor=PHASE_COLORS[name],
                opacity=0.55,
                layer="below",
                line_width=0,
                row=1,
                col=col,
                exclude_empty_subplots=False,
            )
        if panel.heatmap is not None:
            h = panel.heatmap
            zmin, zmax = h.get("zrange", (None, None))
            out.add_trace(
                go.Heatmap(
                    z=np.asarray(h["z"]),
                    x=np.asarray(h["x"]),
                    y=np.asarray(h["y"]),
                    zmin=zmin,
                    zmax=zmax,
                    colorscale=h.get("colorscale", "Viridis"),
                    showscale=col == n,
                    colorbar={"title": {"text": h["colorbar"]}},
                    hovertemplate=f"{panel.xlabel} %{{x}}<br>{panel.ylabel} %{{y}}<br>%{{z:.3g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        if panel.frames is not None:
            f = panel.frames
            out.add_trace(
                go.Bar(
                    x=np.asarray(f["x"]),
                    y=np.asarray(f["y"][-1]),
                    name=f"step {f['steps'][-1]}",
                    marker_color=PALETTE[0],
                ),
                row=1,
                col=col,
            )
            out.frames = [
                go.Frame(data=[go.Bar(x=np.asarray(f["x"]), y=np.asarray(y))], name=str(step))
                for step, y in zip(f["steps"], f["y"])
            ]
            out.update_yaxes(range=[0, float(np.max(f["y"])) * 1.05], row=1, col=col)
            out.update_layout(
                sliders=[
                    {
                        "active": len(f["steps"]) - 1,
                        "currentvalue": {"prefix": "step "},
                        "pad": {"t": 40},
                        "x": 0.12,
                        "len": 0.88,
                        "steps": [
                            {
                                "label": str(s),
                                "method": "animate",
                                "args": [
                                    [str(s)],
                                    {
                                        "mode": "immediate",
                                        "frame": {"duration": 0, "redraw": True},
                                        "transition": {"duration": 0},
                                    },
                                ],
                            }
                            for s in f["steps"]
                        ],
                    }
                ],
                updatemenus=[
                    {
                        "type": "buttons",
                        "showactive": False,
                        "x": 0,
                        "y": -0.22,
                        "xanchor": "left",
                        "yanchor": "top",
                        "direction": "left",
                        "buttons": [
                            {
                                "label": "play",
                                "method": "animate",
                                "args": [None, {"frame": {"duration": 80, "redraw": True}, "fromcurrent": True}],
                            },
                            {
                                "label": "pause",
                                "method": "animate",
                                "args": [[None], {"mode": "immediate", "frame": {"duration": 0}}],
                            },
                        ],
                    }
                ],
            )
        for trace in panel.traces:
            color = trace.color or colors.setdefault(trace.name, PALETTE[len(colors) % len(PALETTE)])
            first = trace.name not in shown
            if trace.legend:
                shown.add(trace.name)
            common = {
                "name": trace.name,
                "legendgroup": trace.name,
                "showlegend": first and trace.legend,
                "opacity": trace.opacity,
            }
            if trace.error is not None and trace.kind != "bar":
                y, (low, high) = np.asarray(trace.y, dtype=float), trace.error
                common["error_y"] = {
                    "type": "data",
                    "symmetric": False,
                    "array": np.asarray(high, dtype=float) - y,
                    "arrayminus": y - np.asarray(low, dtype=float),
                    "color": color,
                }
            if trace.kind == "bar":
                x = list(trace.x)
                pos, width = bar_slots(panel, trace, x)
                numeric = not (x and isinstance(x[0], str))
                slot = (
                    {"offset": float(pos[0] - (float(x[0]) if numeric else 0.0)) - width / 2, "width": width}
                    if panel.grouped and x
                    else {}
                )
                out.add_trace(go.Bar(x=x, y=np.asarray(trace.y), marker_color=color, **slot, **common), row=1, col=col)
            elif trace.kind == "markers":
                out.add_trace(
                    go.Scatter(
                        x=np.asarray(trace.x),
                        y=np.asarray(trace.y, dtype=float),
                        mode="markers",
                        marker={"color": color, "size": 6},
                        **common,
                    ),
                    row=1,
                    col=col,
                )
            else:
                out.add_trace(
                    go.Scatter(
                        x=np.asarray(trace.x),
                        y=np.asarray(trace.y, dtype=float),
                        mode="lines+markers" if trace.error is not None else "lines",
                        line={"color": color, "dash": "dash" if trace.dash else "solid", "width": trace.width},
                        **common,
                    ),
                    row=1,
                    col=col,
                )
        out.update_xaxes(title_text=panel.xlabel, row=1, col=col)
        out.update_yaxes(title_text=panel.ylabel, type="log" if panel.logy else None, row=1, col=col)
    out.update_layout(
        height=440 if any(p.frames for p in fig.panels) else 400,
        margin={"l": 60, "r": 20, "t": 40, "b": 50},
        barmode="overlay",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return out


def render_html(title: str, headers: list[dict], figures: list[Figure]) -> str:
    """The whole page: headers (one per run), then each figure with its caption."""
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_html.escape(title)}</title>",
        f"<style>{STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
    ]
    for head in headers:
        if len(headers) > 1:
            parts.append(f"<h2>{_html.escape(head['title'])}</h2>")
        if head["banner"]:
            parts.append(f"<p class=banner>{_html.escape(head['banner'])}</p>")
        parts.append(f"<p class=verdict>{_html.escape(head['verdict'])}</p><table class=header>")
        parts += [f"<tr><td>{_html.escape(k)}</td><td>{_html.escape(str(v))}</td></tr>" for k, v in head["rows"]]
        parts.append("</table>")
    used = {band[2] for f in figures for p in f.panels for band in p.bands}
    if len(headers) == 1 and used:
        parts.append(
            "<p class=legend>"
            + "".join(f"<span style='background:{c}'>{n}</span>" for n, c in PHASE_COLORS.items() if n in used)
            + "</p>"
        )
    for fig in figures:
        body = plotly_figure(fig).to_html(
            full_html=False, include_plotlyjs=False, div_id=fig.key, config=CONFIG, auto_play=False
        )
        parts.append(
            f"<section><h2>{_html.escape(fig.title)}</h2><p class=caption>{_html.escape(fig.caption)}</p>"
            f"<div class=figure>{body}</div></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)

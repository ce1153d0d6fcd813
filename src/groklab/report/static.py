"""The same figures as static PNG (and SVG where cheap: no heatmaps) for papers, with matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from groklab.report.figures import PALETTE, PHASE_COLORS, Figure, bar_slots  # noqa: E402


def save_static(fig: Figure, directory: Path) -> list[Path]:
    """Write `fig` as DIR/KEY.png (and DIR/KEY.svg unless it has a heatmap); returns the paths."""
    n = len(fig.panels)
    out, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.9), squeeze=False)
    colors: dict[str, str] = {}
    for ax, panel in zip(axes[0], fig.panels):
        for x0, x1, name in panel.bands:
            ax.axvspan(x0, x1, color=PHASE_COLORS[name], alpha=0.6, lw=0, label=name)
        if panel.heatmap is not None:
            h = panel.heatmap
            zmin, zmax = h.get("zrange", (None, None))
            cmap = "viridis"
            if "colorscale" in h:  # plotly's [[fraction, colour], ...] pairs, two per category
                cmap = ListedColormap([colour for _, colour in h["colorscale"][::2]])
            x, y = (np.arange(len(h[a])) if isinstance(h[a][0], str) else np.asarray(h[a]) for a in ("x", "y"))
            mesh = ax.pcolormesh(x, y, np.asarray(h["z"]), shading="nearest", cmap=cmap, vmin=zmin, vmax=zmax)
            if isinstance(h["y"][0], str):  # named rows (seeds, states) and columns (features)
                ax.set_yticks(y, h["y"], fontsize=6 if len(y) > 20 else 8)
            if isinstance(h["x"][0], str):
                ax.set_xticks(x, h["x"], fontsize=7, rotation=60, ha="right")
            out.colorbar(mesh, ax=ax, label=h["colorbar"])
        if panel.frames is not None:  # a slider in the page; here a few checkpoints overlaid
            f = panel.frames
            picks = np.unique(np.linspace(0, len(f["steps"]) - 1, min(6, len(f["steps"]))).astype(int))
            cmap = plt.get_cmap("viridis")
            for i, j in enumerate(picks):
                ax.plot(
                    f["x"], f["y"][j], color=cmap(i / max(1, len(picks) - 1)), lw=1.2, label=f"step {f['steps'][j]}"
                )
        for trace in panel.traces:
            color = trace.color or colors.setdefault(trace.name, PALETTE[len(colors) % len(PALETTE)])
            if trace.kind == "bar":
                x = list(trace.x)
                pos, width = bar_slots(panel, trace, x)
                ax.bar(pos, np.asarray(trace.y, dtype=float), width=width, color=color, label=trace.name)
                if x and isinstance(x[0], str):
                    ax.set_xticks(np.arange(len(x)), x)
            elif trace.kind == "markers":
                ax.plot(
                    np.asarray(trace.x),
                    np.asarray(trace.y, dtype=float),
                    "o",
                    ms=3.5,
                    color=color,
                    alpha=trace.opacity,
                    label=trace.name if trace.legend else None,
                )
            else:
                ax.plot(
                    np.asarray(trace.x),
                    np.asarray(trace.y, dtype=float),
                    color=color,
                    alpha=trace.opacity,
                    ls="--" if trace.dash else "-",
                    lw=trace.width * 0.8,
                    marker="o" if trace.error is not None else None,
                    ms=4,
                    label=trace.name if trace.legend else None,
                )
            if trace.error is not None and trace.kind != "bar":
                y, (low, high) = np.asarray(trace.y, dtype=float), trace.error
                bars = [y - np.asarray(low, dtype=float), np.asarray(high, dtype=float) - y]
                ax.errorbar(np.asarray(trace.x), y, yerr=bars, fmt="none", ecolor=color, capsize=3, lw=1)
        if panel.logy:
            ax.set_yscale("log")
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.traces or panel.frames or panel.bands:
            ax.legend(fontsize=7, frameon=False)
    out.suptitle(fig.title)
    out.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{fig.key}.png"]
    out.savefig(paths[0], dpi=150)
    if not any(p.heatmap for p in fig.panels):
        paths.append(directory / f"{fig.key}.svg")
        out.savefig(paths[1])
    plt.close(out)
    return paths

"""Report layer: reads runs from the store and draws them (one offline HTML page; PNG/SVG on request).

groklab.write_report(["runs/nanda"])                    # -> runs/nanda/report.html
groklab.write_report(["runs/a", "runs/b"], "cmp.html")  # curves of several runs overlaid
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from groklab.errors import RunDirError, UserError
from groklab.report.figures import (
    Figure,
    curve_figures,
    fourier_figures,
    header,
    measure_figures,
    other_figures,
    source_figures,
    stability_figures,
    structural_figures,
    weight_stats_figures,
)
from groklab.report.html import render_html
from groklab.store import Run

PathLike = str | Path


def build_report(runs: Sequence[Run]) -> tuple[str, list[Figure]]:
    """The page and its figures: for one run everything it has data for; for several, their
    curves and progress measures overlaid."""
    for run in runs:
        if run.metrics.empty:
            raise RunDirError(f"{run.path} has no metrics yet; report it after its first evaluation")
    figures = (
        curve_figures(list(runs))
        + structural_figures(list(runs))
        + measure_figures(list(runs))
        + stability_figures(list(runs))
        + weight_stats_figures(list(runs))
    )
    if len(runs) == 1:
        drawn = {t.column for f in figures for p in f.panels for t in p.traces if t.column}
        figures += source_figures(runs[0]) + fourier_figures(runs[0]) + other_figures(runs[0], drawn)
        title = f"groklab report: {header(runs[0])['title']}"
    else:
        title = "groklab comparison: " + ", ".join(run.path.name for run in runs)
    return render_html(title, [header(run) for run in runs], figures), figures


def write_report(paths: Sequence[PathLike], out: PathLike | None = None, png: PathLike | None = None) -> Path:
    """Write the report of one run (default RUN_DIR/report.html) or the comparison of several
    (default ./groklab-comparison.html); with `png`, also each figure as PNG (and SVG) there."""
    runs = [Run(path) for path in paths]
    if not runs:
        raise UserError("give at least one run directory to report")
    page, figures = build_report(runs)
    if out is None and len(runs) == 1:
        target = runs[0].dir.write_report(page)
    else:
        target = Path(out) if out is not None else Path("groklab-comparison.html")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(page)
        except OSError as err:
            raise UserError(f"cannot write the report to {target}: {err.strerror}; choose another -o") from None
    if png is not None:
        from groklab.report.static import save_static

        try:
            for fig in figures:
                save_static(fig, Path(png))
        except OSError as err:
            raise UserError(f"cannot write figures to {png}: {err.strerror}; choose another --png") from None
    return target


__all__ = ["build_report", "write_report"]

"""Populations side by side through the same lenses (`groklab compare`): each population is a sweep, or
one point of a grid sweep (`SWEEP_DIR@model.n_layers=6`); the numbers come from dynamics.compare, the
page from report.compare.

    from groklab.sweep.compare import compare_sweeps
    result = compare_sweeps(["sweeps/quick", "sweeps/qf-lab"], out="compare.html")
    result.verdicts                     # claim by claim: same / different / not enough runs
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from groklab.dynamics.compare import population_stats, run_table, verdicts
from groklab.dynamics.phases import metric_columns
from groklab.errors import UserError
from groklab.store import SweepDir
from groklab.store.sweep_dir import point_name
from groklab.sweep.maps import MIN_RUNS, USABLE, map_sweep


@dataclass
class Population:
    label: str
    sweep: SweepDir
    point: dict | None
    runs: dict[int, pd.DataFrame]  # seed -> metrics, the runs that are done
    table: pd.DataFrame  # dynamics.compare.run_table
    stats: pd.DataFrame  # dynamics.compare.population_stats
    columns: dict  # which columns played which part (metric_columns)
    map: dict | None  # the training map's tables (states, detours, transitions, convergence)
    map_note: str  # where the map came from, or why there is none


@dataclass
class CompareResult:
    path: Path
    populations: list[Population]
    verdicts: pd.DataFrame


def parse_population(spec: str | Path) -> tuple[SweepDir, dict | None]:
    """ "SWEEP_DIR" or "SWEEP_DIR@KEY=VALUE,..." (one point of a grid sweep)."""
    text = str(spec)
    path, _, point_text = text.partition("@")
    sweep = SweepDir.open(Path(path))
    if not point_text:
        if sweep.points != [{}]:
            raise UserError(f"{path} sweeps a grid: compare one point of it, e.g. {path}@{point_name(sweep.points[0])}")
        return sweep, None
    for point in sweep.points:
        if point and point_text == point_name(point):
            return sweep, point
    raise UserError(
        f"{text}: no such point in the sweep's grid; one of: " + "; ".join(point_name(p) for p in sweep.points if p)
    )


def load_population(sweep: SweepDir, point: dict | None, label: str, n_boot: int = 2000) -> Population:
    """Read a population's finished runs and compute their stages and statistics; its stored training map,
    if any (`attach_map` fits a missing one)."""
    from groklab.sweep import sweep_runs

    runs = {
        seed: run.metrics
        for seed, run in sweep_runs(sweep, point).items()
        if run.status in USABLE and not run.metrics.empty
    }
    if not runs:
        raise UserError(
            f"{label}: no finished run to compare in {sweep.path}; finish the sweep first (run its "
            "`groklab sweep` command again)"
        )
    table = run_table(runs)
    maps = sweep.read_map(point)
    return Population(
        label,
        sweep,
        point,
        runs,
        table,
        population_stats(table, n_boot=n_boot),
        metric_columns(next(iter(runs.values()))),
        maps,
        "the sweep's stored map" if maps else "",
    )


def attach_map(pop: Population, fit: bool = True, progress: Callable[[str], None] = lambda line: None) -> None:
    """Give a population without a stored map one: fitted now (with its held-out metric as the convergence
    column) and stored in the sweep, or a note saying why there is none."""
    if pop.map is not None:
        return
    if not fit:
        pop.map_note = "no training map (not fitted: --no-maps)"
    elif len(pop.runs) < MIN_RUNS:
        pop.map_note = f"no training map: {len(pop.runs)} finished run(s), a map needs {MIN_RUNS}"
    else:
        held = pop.columns["held_out"] or pop.sweep.metric  # an imported sweep: the metric it recorded, or none
        progress(
            f"{pop.label}: no training map yet; fitting one (groklab map {pop.sweep.path}"
            + (f" --metric {held})" if held else ")")
        )
        try:
            map_sweep(
                pop.sweep,
                column=held,
                threshold=pop.sweep.threshold,
                point=pop.point,
                covariance=pop.sweep.covariance,
                progress=progress,
            )
            pop.map, pop.map_note = pop.sweep.read_map(pop.point), "fitted now and stored in the sweep"
        except UserError as err:
            pop.map_note = f"no training map: {err}"


def compare_sweeps(
    specs: Sequence[str | Path],
    out: str | Path = "compare.html",
    labels: Sequence[str] | None = None,
    fit_maps: bool = True,
    min_runs: int = 3,
    n_boot: int = 2000,
    progress: Callable[[str], None] = lambda line: None,
) -> CompareResult:
    """Compare two or more populations and write the page `out` (self-contained HTML) and its tables beside
    it (OUT_runs.csv, OUT_stats.csv, OUT_verdicts.csv). Every population is read and checked before any map
    is fitted, so a bad argument fails at once and changes no sweep."""
    from groklab.report.compare import render_compare_page

    if len(specs) < 2:
        raise UserError("compare needs at least two sweeps (populations)")
    if labels is not None and len(labels) != len(specs):
        raise UserError(f"--labels: {len(labels)} label(s) for {len(specs)} sweeps")
    parsed = [parse_population(spec) for spec in specs]
    names = (
        list(labels)
        if labels
        else [sweep.path.name + (f"@{point_name(point)}" if point else "") for sweep, point in parsed]
    )
    if len(set(names)) < len(names):
        raise UserError(f"two populations share the label {names}; name them with --labels")
    populations = [load_population(sweep, point, name, n_boot) for (sweep, point), name in zip(parsed, names)]
    for pop in populations:
        attach_map(pop, fit_maps, progress)
    table = verdicts(
        {p.label: p.stats for p in populations},
        {p.label: p.map["detours"] if p.map else None for p in populations},
        min_runs=min_runs,
    )
    out = Path(out)
    page = render_compare_page(populations, table, min_runs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page)
        stem = out.with_suffix("")
        pd.concat([p.table.assign(population=p.label) for p in populations]).to_csv(f"{stem}_runs.csv", index=False)
        pd.concat([p.stats.assign(population=p.label) for p in populations]).to_csv(f"{stem}_stats.csv", index=False)
        table.to_csv(f"{stem}_verdicts.csv", index=False)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror}; choose another -o") from None
    return CompareResult(out, populations, table)

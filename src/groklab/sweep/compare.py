"""Populations side by side through the same lenses (`groklab compare`): each population is a sweep, or
one point of a grid sweep (`SWEEP_DIR@model.n_layers=6`); the numbers come from dynamics.compare, the
page from report.compare.

    from groklab.sweep.compare import compare_sweeps
    result = compare_sweeps(["sweeps/quick", "sweeps/qf-lab"], out="compare.html")
    result.verdicts                     # claim by claim: same / different / not enough runs
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd

from groklab.dynamics.compare import population_stats, run_table, verdicts
from groklab.dynamics.phases import metric_columns
from groklab.errors import UserError
from groklab.store import SweepDir
from groklab.sweep.maps import MIN_RUNS, USABLE, map_sweep


@dataclass
class Population:
    label: str
    sweep: SweepDir
    point: Optional[dict]
    runs: dict[int, pd.DataFrame]   # seed -> metrics, the runs that are done
    table: pd.DataFrame             # dynamics.compare.run_table
    stats: pd.DataFrame             # dynamics.compare.population_stats
    columns: dict                   # which columns played which part (metric_columns)
    map: Optional[dict]             # the training map's tables (states, detours, transitions, convergence)
    map_note: str                   # where the map came from, or why there is none


@dataclass
class CompareResult:
    path: Path
    populations: list[Population]
    verdicts: pd.DataFrame


def parse_population(spec: Union[str, Path]) -> tuple[SweepDir, Optional[dict]]:
    """"SWEEP_DIR" or "SWEEP_DIR@KEY=VALUE,..." (one point of a grid sweep)."""
    text = str(spec)
    path, _, point_text = text.partition("@")
    sweep = SweepDir.open(Path(path))
    if not point_text:
        if sweep.points != [{}]:
            raise UserError(f"{path} sweeps a grid: compare one point of it, e.g. {path}@"
                            + ",".join(f"{k}={v}" for k, v in sweep.points[0].items()))
        return sweep, None
    for point in sweep.points:
        if point and point_text == ",".join(f"{k}={v}" for k, v in point.items()):
            return sweep, point
    raise UserError(f"{text}: no such point in the sweep's grid; one of: "
                    + "; ".join(",".join(f"{k}={v}" for k, v in p.items()) for p in sweep.points if p))


def load_population(spec: Union[str, Path], label: Optional[str] = None, fit_map: bool = True, n_boot: int = 2000,
                    progress: Callable[[str], None] = lambda line: None) -> Population:
    """Read a population's finished runs, their stages and statistics, and its training map (the stored one;
    fitted now and stored in the sweep when there is none and `fit_map`)."""
    from groklab.sweep import sweep_runs

    sweep, point = parse_population(spec)
    label = label or (sweep.path.name + (f"@{','.join(f'{k}={v}' for k, v in point.items())}" if point else ""))
    runs = {seed: run.metrics for seed, run in sweep_runs(sweep, point).items()
            if run.status in USABLE and not run.metrics.empty}
    if not runs:
        raise UserError(f"{spec}: no finished run to compare; finish the sweep first (run its `groklab sweep` "
                        "command again)")
    columns = metric_columns(next(iter(runs.values())))
    table = run_table(runs)
    maps, note = sweep.read_map(point), "the sweep's stored map"
    if maps is None and not fit_map:
        note = "no training map (not fitted: --no-maps)"
    elif maps is None and len(runs) < MIN_RUNS:
        note = f"no training map: {len(runs)} finished run(s), a map needs {MIN_RUNS}"
    elif maps is None:
        progress(f"{label}: no training map yet; fitting one (groklab map {sweep.path} --metric {columns['held_out']})")
        try:
            map_sweep(sweep, column=columns["held_out"], threshold=sweep.threshold, point=point, progress=progress)
            maps, note = sweep.read_map(point), "fitted now and stored in the sweep"
        except UserError as err:
            note = f"no training map: {err}"
    return Population(label, sweep, point, runs, table, population_stats(table, n_boot=n_boot), columns, maps, note)


def compare_sweeps(specs: Sequence[Union[str, Path]], out: Union[str, Path] = "compare.html",
                   labels: Optional[Sequence[str]] = None, fit_maps: bool = True, min_runs: int = 3,
                   n_boot: int = 2000, progress: Callable[[str], None] = lambda line: None) -> CompareResult:
    """Compare two or more populations and write the page `out` (self-contained HTML) and its tables beside
    it (OUT_runs.csv, OUT_stats.csv, OUT_verdicts.csv)."""
    from groklab.report.compare import render_compare_page

    if len(specs) < 2:
        raise UserError("compare needs at least two sweeps (populations)")
    if labels is not None and len(labels) != len(specs):
        raise UserError(f"--labels: {len(labels)} label(s) for {len(specs)} sweeps")
    populations = [load_population(spec, labels[i] if labels else None, fit_maps, n_boot, progress)
                   for i, spec in enumerate(specs)]
    names = [p.label for p in populations]
    if len(set(names)) < len(names):
        raise UserError(f"two populations share the label {names}; name them with --labels")
    table = verdicts({p.label: p.stats for p in populations},
                     {p.label: p.map["detours"] if p.map else None for p in populations}, min_runs=min_runs)
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

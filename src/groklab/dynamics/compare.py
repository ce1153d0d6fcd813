"""Populations of runs side by side through the same lenses: is grokking on one task the same phenomenon as
on another? (Nanda et al. 2023 read three phases and a leading internal measure off modular addition;
Murty et al. 2023 read a leading tree-structuredness off structural grokking; Hu et al. 2023 read detours
off training maps. A review of the first two calls them one phenomenon; this module turns the claim into
numbers with uncertainty, population by population.)

Per run (`run_table`): the stages of `detect_stages` (memorized, generalized, cleanup end; structure and
LLC onsets), and from them
- memorization = memorized_step / generalized_step, delay = (generalized - memorized) / generalized_step:
  the stages in normalized time (step / that run's generalization step), so tasks of any length compare;
- structure_lead, llc_lead: how far the measure's onset precedes generalization, as a fraction of the
  delay (> 0: it moved first; detect_stages);
- norm_fall: the weight norm's fall after generalization, (peak after generalization - lowest after that
  peak) / peak, whatever its size (detect_stages; cleanup: Nanda et al.'s weight decay removing the memorizing solution);
- three_stages: the run memorized, then generalized, then its weight norm completed a fall of >= 10%.

Per population (`population_stats`): each quantity's mean over the runs that have it, with a percentile
bootstrap over seeds (resampling runs with replacement; `n_boot`, seeded) for its 95% confidence
interval; shares (runs that generalize, runs with three stages) the same way over all runs.

`verdicts`: claim by claim, each population "yes" (the CI lies on the claim's side of its threshold), "no"
(on the other side) or "unclear" (it straddles; or fewer than `min_runs` runs have the quantity: "n/a");
the claim is "same" when both populations say yes or both say no, "different" when one says yes and the
other no, and "not enough runs" otherwise — a CI that straddles is not evidence either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from groklab.dynamics.phases import detect_stages, metric_columns

# claim, quantity, threshold: "yes" when the CI lies above the threshold, "no" when below
CLAIMS = (
    ("most runs generalize", "generalizes", 0.5),
    ("generalization long after memorization (delay > half the time to generalize)", "delay", 0.5),
    ("three stages: memorize, generalize, clean up (share of runs)", "three_stages", 0.5),
    ("the structure measure moves before generalization (lead > 0)", "structure_lead", 0.0),
    ("the LLC moves before generalization (lead > 0)", "llc_lead", 0.0),
    ("cleanup shrinks the weights (norm falls > 10% after generalization)", "norm_fall", 0.1),
)
SHARES = ("generalizes", "three_stages")  # over all runs; the rest over the runs that generalize
QUANTITIES = (
    "generalizes",
    "three_stages",
    "memorized_step",
    "generalized_step",
    "cleanup_end_step",
    "memorization",
    "delay",
    "cleanup",
    "structure_lead",
    "llc_lead",
    "norm_fall",
)
CURVES = ("held_out", "structure", "llc", "norm")


def run_row(metrics: pd.DataFrame) -> dict:
    """One run's stages and the derived quantities above (None where the run lacks them)."""
    stages = detect_stages(metrics)
    if not stages:
        # nothing to answer with (e.g. an imported LM series with weights only): n/a, not "did not generalize"
        return {"generalizes": None, "three_stages": None, "stages_note": "no train / held-out metric"}
    gen, mem, clean = (stages.get(k) for k in ("generalized_step", "memorized_step", "cleanup_end_step"))
    row = {
        k: stages.get(k)
        for k in (
            "memorized_step",
            "generalized_step",
            "cleanup_end_step",
            "structure_onset_step",
            "llc_onset_step",
            "structure_lead",
            "llc_lead",
        )
    }
    row["generalizes"] = gen is not None
    row["three_stages"] = None not in (mem, gen, clean) and mem <= gen < clean
    if gen:
        row["memorization"] = mem / gen if mem is not None else None
        row["delay"] = (gen - mem) / gen if mem is not None else None
        row["cleanup"] = (clean - gen) / gen if clean is not None else None
        row["norm_fall"] = stages.get("norm_fall")
    row["stages_note"] = stages.get("stages_note", "")
    return row


def run_table(runs: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per seed: run_row of its metrics."""
    return pd.DataFrame([{"seed": seed, **run_row(m)} for seed, m in sorted(runs.items())])


def bootstrap_mean(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap CI of the mean of `values` (NaN when empty)."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


class PeakOf(NamedTuple):
    """What a grid peak is of (sweep.grid_peaks' keys): `metric`'s final mean over seeds, or, with `crossing`, the
    share of seeds whose metric reaches it at some point. str(): "gen_first_word_acc", "gen_first_word_acc
    crossing 0.8" (as `groklab show` prints it)."""

    metric: str
    crossing: float | None = None

    def __str__(self) -> str:
        return self.metric if self.crossing is None else f"{self.metric} crossing {self.crossing:g}"


def bootstrap_peak(groups: Mapping, n_boot: int = 2000, seed: int = 0) -> tuple[dict, float]:
    """Where a quantity peaks along an ordered grid, and how sure that is (Murty et al.'s inverted U: final
    generalization against depth). `groups`: each grid value, in order, to its seeds' values. Each point's
    seeds are resampled with replacement `n_boot` times, independently of the other points (seeded); returns
    the share of resamples in which each point has the highest mean (ties to the first; a resample in which every
    point has the same mean, e.g. no seed anywhere crossing a threshold, is flat and counts for none), and the
    share in which that point is neither the first nor the last (an interior peak, the inverted U rather than a
    monotone trend; NaN with fewer than 3 points). Points without values are left out."""
    points = {x: np.asarray(v, dtype=float) for x, v in groups.items()}
    points = {x: v[~np.isnan(v)] for x, v in points.items()}
    points = {x: v for x, v in points.items() if len(v)}
    if not points:
        return {}, math.nan
    rng = np.random.default_rng(seed)
    means = np.stack([rng.choice(v, size=(n_boot, len(v)), replace=True).mean(axis=1) for v in points.values()])
    best = np.where(means.max(axis=0) > means.min(axis=0), means.argmax(axis=0), -1)  # -1: flat, no peak
    shares = {x: float((best == i).mean()) for i, x in enumerate(points)}
    interior = float(((best > 0) & (best < len(points) - 1)).mean()) if len(points) >= 3 else math.nan
    return shares, interior


def describe_peak(shares: Mapping, interior: float, n_boot: int = 2000) -> str:
    """bootstrap_peak's result in words: "6 in 62%, 8 in 30%, 4 in 8% of 2000 resamples of the seeds; inside
    the grid in 100%" (the points that ever peak, most often first; "flat in N%": resamples with no peak)."""
    ranked = sorted(((share, x) for x, share in shares.items() if f"{share:.0%}" != "0%"), key=lambda t: -t[0])
    flat = 1 - sum(shares.values())
    parts = [f"{x} in {share:.0%}" for share, x in ranked] + ([f"flat in {flat:.0%}"] if f"{flat:.0%}" != "0%" else [])
    text = ", ".join(parts) + f" of {n_boot} resamples of the seeds"
    return text + ("" if math.isnan(interior) else f"; inside the grid in {interior:.0%}")


def rank_correlation(x, y, groups=None) -> tuple[float, float, int]:
    """(Spearman's rho, its two-sided p, n) of paired values, NaN pairs left out; with `groups` (a label per pair,
    e.g. each run's depth) the values are first centred on their group's mean, so that a trend both share with
    the groups (deeper models: higher t-score and better generalization) does not count, only how the runs of a
    group differ. NaN (and the n) with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    frame = pd.DataFrame({"x": list(x), "y": list(y), "g": [0] * len(x) if groups is None else list(groups)})
    frame = frame.astype({"x": float, "y": float}).dropna()
    if groups is not None:
        frame[["x", "y"]] -= frame.groupby("g")[["x", "y"]].transform("mean")
    if len(frame) < 3 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return math.nan, math.nan, len(frame)
    rho, p = spearmanr(frame["x"], frame["y"])
    return float(rho), float(p), len(frame)


def population_stats(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per quantity: n (runs that have it), mean, ci_low, ci_high."""
    rows = []
    generalizing = table[table["generalizes"].eq(True)] if "generalizes" in table else table.iloc[:0]
    for name in QUANTITIES:
        source = table if name in SHARES else generalizing
        values = source[name].astype(float).tolist() if name in source else []
        values = [v for v in values if not math.isnan(v)]
        mean, low, high = bootstrap_mean(values, n_boot, seed=seed)
        rows.append({"quantity": name, "n": len(values), "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def claim_outcome(stats: pd.DataFrame, quantity: str, threshold: float, min_runs: int = 3) -> str:
    """yes / no / unclear / n/a for one population (see the module docstring)."""
    row = stats.set_index("quantity").loc[quantity]
    if row["n"] < min_runs:
        return "n/a"
    if row["ci_low"] > threshold:
        return "yes"
    if row["ci_high"] < threshold:
        return "no"
    return "unclear"


def verdict(outcomes: list[str]) -> str:
    if all(o == "yes" for o in outcomes) or all(o == "no" for o in outcomes):
        return "same"
    if "yes" in outcomes and "no" in outcomes:
        return "different"
    return "not enough runs"


def verdicts(
    stats: Mapping[str, pd.DataFrame],
    detours: Mapping[str, pd.DataFrame | None],
    min_runs: int = 3,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Claim by claim: each population's outcome and numbers, and the verdict across the populations.
    `detours`: each population's detour table (dynamics.detour_test: state, r, p_holm, obligatory, detour), or None when
    it has no training map."""
    rows = []
    for claim, quantity, threshold in CLAIMS:
        row = {"claim": claim}
        outcomes = []
        for name, table in stats.items():
            s = table.set_index("quantity").loc[quantity]
            outcome = claim_outcome(table, quantity, threshold, min_runs)
            outcomes.append(outcome)
            row[name] = (
                f"{outcome}: {s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}], n = {int(s['n'])}"
                if s["n"]
                else f"{outcome}: no run has it"
            )
        row["verdict"] = verdict(outcomes)
        rows.append(row)
    row, outcomes = {"claim": f"the training map has a detour state (p < {alpha}, Holm)"}, []
    for name in stats:
        table = detours.get(name)
        if table is None:
            outcomes.append("n/a")
            row[name] = "n/a: no training map"
            continue
        found = table[table["detour"].astype(bool)]
        tested = int((~table["obligatory"].astype(bool)).sum())
        outcomes.append("yes" if len(found) else "no")
        row[name] = (
            "yes: "
            + ", ".join(f"state {int(s.state)} (r = {s.r:+.2f}, p = {s.p_holm:.3g})" for s in found.itertuples())
            if len(found)
            else f"no: {tested} optional state(s) tested, none a detour"
        )
    row["verdict"] = verdict(outcomes)
    rows.append(row)
    return pd.DataFrame(rows)


def normalized_curves(metrics: pd.DataFrame, generalized_step: int) -> pd.DataFrame:
    """The run's curves against normalized time t = step / generalized_step: the held-out metric and the
    structure measure as they are, the LLC over its largest value, the weight norm over its value at
    generalization (columns t, held_out, structure, llc, norm; NaN where the run lacks a measure)."""
    cols = metric_columns(metrics)
    m = metrics.sort_values("step")
    out = pd.DataFrame({"t": m["step"].to_numpy(dtype=float) / generalized_step})
    for name in CURVES:
        column = cols.get(name)
        values = m[column].to_numpy(dtype=float) if column else np.full(len(m), np.nan)
        if name == "llc" and column:
            top = np.nanmax(np.abs(values))
            values = values / top if top > 0 else values
        if name == "norm" and column:
            at = m.loc[m["step"] >= generalized_step, column].dropna()
            values = values / float(at.iloc[0]) if len(at) and at.iloc[0] else values
        out[name] = values
    return out

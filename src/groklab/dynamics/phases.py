"""The three phases of grokking — memorization, circuit formation, cleanup — from a metrics table.

Nanda et al. 2023 (§5.2, Fig. 7) read the phases off their progress measures: memorization (train
loss falls to its floor while test loss rises), circuit formation (test loss stays high while the
restricted loss falls and the excluded loss rises: the Fourier circuit forms beside the
memorizing one), cleanup (weight decay removes the memorizing solution: test loss collapses while
the Gini coefficients of W_E and W_L rise sharply and the weight norm falls). Their mainline run:
1.4k / 9.4k / 14k epochs. This module turns that reading into a rule on the table alone:

- memorization ends at the first evaluation where the train loss is within `floor_factor` (10x)
  of its floor, the lowest train loss before grokking (before test accuracy first reaches 50%);
- circuit formation ends where the test loss starts to collapse: the first evaluation after
  memorization where the test loss has fallen `collapse_decades` (1) below its peak;
- cleanup ends when the collapse is over: the first evaluation after the steepest part of the
  collapse where the test loss falls at less than `settle` (10%) of its steepest rate (log10 test
  loss over the next `window` evaluations) and, where the table has `gini_W_L`, the Gini
  coefficient of W_L has completed `gini_fraction` (90%) of its rise since circuit formation ended.

The rule degrades rather than invents: a run that never memorizes, never collapses its test loss
(never groks) or stops before the collapse is over gets None for the boundaries it lacks and a note
saying why. Nothing here looks at the step of the accuracy jump, so "the test accuracy jumps inside
cleanup" is a finding the measures can confirm or refute, not an assumption.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _first(metrics: pd.DataFrame, mask, after: int | None = None) -> int | None:
    rows = metrics.loc[mask & (metrics["step"] >= (after if after is not None else -math.inf)), "step"]
    return int(rows.iloc[0]) if len(rows) else None


def detect_phases(
    metrics: pd.DataFrame,
    floor_factor: float = 10.0,
    collapse_decades: float = 1.0,
    settle: float = 0.1,
    window: int = 5,
    gini_fraction: float = 0.9,
) -> dict:
    """{memorization_end, circuit_formation_end, cleanup_end: step or None, phase_note: why any is None}."""
    need = {"step", "train_loss", "train_acc", "test_loss", "test_acc"}
    if metrics.empty or not need <= set(metrics.columns):
        return {}
    m = metrics.sort_values("step").reset_index(drop=True)
    out = {"memorization_end": None, "circuit_formation_end": None, "cleanup_end": None, "phase_note": ""}

    half = _first(m, m["test_acc"] >= 0.5)
    before = m if half is None else m[m["step"] < half]
    floor = before["train_loss"].min() if len(before) else m["train_loss"].min()
    memorized = (m["train_loss"] <= floor_factor * floor) & (m["train_acc"] >= 0.99)
    t_mem = _first(m, memorized)
    if t_mem is None:
        out["phase_note"] = "no memorization: train accuracy never reached 99% at its loss floor"
        return out
    out["memorization_end"] = t_mem

    after_mem = m[m["step"] >= t_mem]
    peak = after_mem["test_loss"].max()
    peak_step = int(after_mem.loc[after_mem["test_loss"].idxmax(), "step"])
    collapsed = np.log10(m["test_loss"].clip(lower=1e-300)) <= math.log10(peak) - collapse_decades
    t_circ = _first(m, collapsed, after=peak_step)
    if t_circ is None:
        out["phase_note"] = "no circuit formation end / no cleanup: the test loss never collapsed (no grokking)"
        return out
    out["circuit_formation_end"] = t_circ

    rest = m[m["step"] >= t_circ].reset_index(drop=True)
    log_loss = np.log10(rest["test_loss"].clip(lower=1e-300))
    slope = (log_loss.shift(-window) - log_loss) / (rest["step"].shift(-window) - rest["step"])  # decades / step
    steepest = slope.idxmin() if slope.notna().any() else None
    done = (slope > settle * slope.min()) & (rest.index > (steepest if steepest is not None else len(rest)))
    if "gini_W_L" in rest and rest["gini_W_L"].notna().any():
        g = rest["gini_W_L"]
        start = g.dropna().iloc[0]
        done &= g >= start + gini_fraction * (g.max() - start)
    t_clean = _first(rest, done)
    if t_clean is None:
        out["phase_note"] = "no cleanup end yet: the run stopped while the test loss was still collapsing"
        return out
    out["cleanup_end"] = t_clean
    return out


def phase_evidence(metrics: pd.DataFrame, phases: dict) -> dict:
    """What the progress measures did in each phase (Nanda et al.'s qualitative claims, as numbers):

    - grok_inside_cleanup: test accuracy first reached 99% after circuit formation ended and no later
      than cleanup ended;
    - excluded_over_train: the excluded loss at the end of circuit formation over the largest train
      loss during it (>> 1: the model came to rely on the key frequencies while still fitting the
      training set);
    - restricted_lead_steps: how many steps before the test loss the restricted loss fell below 0.1
      (> 0: the Fourier circuit alone generalised before the whole model did);
    - gini_W_E_speedup, gini_W_L_speedup: the Gini coefficient's rate of rise per step during cleanup
      over its rate during circuit formation (> 1: it rises sharply in cleanup);
    - sum_sq_weights_drop: the fraction of the weight norm lost during cleanup.
    """
    t_mem, t_circ, t_clean = (phases.get(k) for k in ("memorization_end", "circuit_formation_end", "cleanup_end"))
    if t_circ is None or t_clean is None:
        return {}
    m = metrics.sort_values("step").set_index("step")
    grok = _first(metrics.sort_values("step"), metrics.sort_values("step")["test_acc"] >= 0.99)
    out = {"grok_inside_cleanup": grok is not None and t_circ < grok <= t_clean}
    forming = m.loc[t_mem:t_circ]
    if "excluded_loss" in m:
        out["excluded_over_train"] = float(m.loc[t_circ, "excluded_loss"] / forming["train_loss"].max())
    if "restricted_loss" in m:
        r = _first(metrics, metrics["restricted_loss"] < 0.1)
        t = _first(metrics, metrics["test_loss"] < 0.1)
        out["restricted_lead_steps"] = None if None in (r, t) else t - r
    for name in ("gini_W_E", "gini_W_L"):
        if name in m:
            rate = lambda a, b, name=name: (m.loc[b, name] - m.loc[a, name]) / (b - a)  # noqa: E731
            slow = rate(t_mem, t_circ)
            out[f"{name}_speedup"] = float(rate(t_circ, t_clean) / slow) if slow > 0 else None
    if "sum_sq_weights" in m:
        out["sum_sq_weights_drop"] = float(1 - m.loc[t_clean, "sum_sq_weights"] / m.loc[t_circ, "sum_sq_weights"])
    return out


# -- stages: the same reading for every task -------------------------------------------------------------

# the papers' own generalization metrics, preferred where a task logs several (Murty et al. 2023, §3: question
# formation's first word, tense inflection's main verb, Dyck's closing brackets)
HEADLINE_GEN = ("gen_first_word_acc", "gen_main_verb_acc", "gen_closing_acc")
# a structural run has learnt its in-distribution set when the id twin of its held-out metric reaches this
# (the structural presets' outcome): what separates a run that never generalizes from one that never trains
ID_LEARNED = 0.95
STRUCTURE_COLUMNS = ("structure", "fourier_mult_fve", "t_score")  # the first present is the structure measure
NORM_COLUMNS = ("weight_norm", "sum_sq_weights", "l2")  # the first present is the weight norm


def metric_columns(metrics: pd.DataFrame) -> dict[str, str | None]:
    """Which columns play which part: the held-out metric (test_acc, or a structural LM's generalization
    metric: its paper's headline metric, HEADLINE_GEN, else the first gen_* column), the train metric (train_acc, or the held-out metric's in-distribution
    id_* twin), the structure measure, the LLC and the weight norm (None where the table has none)."""
    gen = sorted(c for c in metrics.columns if c.startswith("gen_") and c not in ("gen_acc", "gen_loss"))
    gen = [c for c in HEADLINE_GEN if c in gen] + [c for c in gen if c not in HEADLINE_GEN]
    held = gen[0] if gen else "test_acc" if "test_acc" in metrics else None
    twin = "id_" + held[len("gen_") :] if gen else None
    pick = lambda names: next((c for c in names if c in metrics and metrics[c].notna().any()), None)  # noqa: E731
    return {
        "held_out": held,
        "train": twin if twin in metrics else "train_acc" if "train_acc" in metrics else None,
        "structure": pick(STRUCTURE_COLUMNS),
        "llc": pick(("llc",)),
        "norm": pick(NORM_COLUMNS),
    }


def detect_stages(metrics: pd.DataFrame, min_rise: float = 0.2, onset: float = 0.2, norm_fall: float = 0.1) -> dict:
    """The stages of any run, from named columns (`metric_columns`), for modular arithmetic, structural LMs
    and sparse parity alike:

    - memorized_step: the train metric first reaches min(0.99, 0.99 x its maximum) (None if its maximum
      stays below 0.5);
    - generalized_step: the held-out metric first crosses halfway from its value at memorization (at the
      start, without one) to its maximum — only if that rise is at least `min_rise` (else None: no jump);
    - structure_onset_step, llc_onset_step: after memorization (from the start, without one), the measure
      first leaves its value at memorization by `onset` of its range from then on, and stays out at the next
      evaluation (None without the column or a range). From memorization, because the LLC also rises while
      the network memorizes: the onset that matters is the one that breaks the memorizing plateau;
    - cleanup_end_step: after generalization, the weight norm has completed 90% of its fall from its peak
      — only if it falls by at least `norm_fall` of the peak;
    and the evidence: structure_lead, llc_lead (generalized - onset, as a fraction of the delay from
    memorization to generalization: > 0, the measure moved first), norm_fall (the weight norm's fall after
    generalization over its peak there, whatever its size) and norm_drop (the same, only with a cleanup).
    A boundary a run does not have is None, and stages_note says why: nothing is invented."""
    cols = metric_columns(metrics)
    keys = ("memorized_step", "generalized_step", "structure_onset_step", "llc_onset_step", "cleanup_end_step")
    out: dict = {k: None for k in keys}
    notes = []
    if metrics.empty or cols["held_out"] is None or cols["train"] is None:
        return {}
    m = metrics.sort_values("step").reset_index(drop=True)
    train, held = m[cols["train"]], m[cols["held_out"]]
    if train.max() >= 0.5:
        out["memorized_step"] = _first(m, train >= min(0.99, 0.99 * train.max()))
    else:
        notes.append(f"never fit the training data ({cols['train']} at most {train.max():.2f})")
    base_at = out["memorized_step"] if out["memorized_step"] is not None else int(m["step"].iloc[0])
    base = float(held[m["step"] == base_at].iloc[0])
    top = float(held[m["step"] >= base_at].max())
    if top - base >= min_rise:
        out["generalized_step"] = _first(m, held >= base + 0.5 * (top - base), after=base_at)
    else:
        notes.append(
            f"no generalization: {cols['held_out']} rose by {top - base:.2f} (< {min_rise}) after "
            f"{'memorization' if out['memorized_step'] is not None else 'the start'}"
        )
    for name, key in (("structure", "structure_onset_step"), ("llc", "llc_onset_step")):
        if cols[name] is not None:
            out[key] = _onset(m[m["step"] >= base_at], cols[name], onset)
    delay = (
        None
        if None in (out["memorized_step"], out["generalized_step"])
        else out["generalized_step"] - out["memorized_step"]
    )
    for name in ("structure", "llc"):
        t = out[f"{name}_onset_step"]
        if t is not None and out["generalized_step"] is not None and delay:
            out[f"{name}_lead"] = (out["generalized_step"] - t) / delay
    if cols["norm"] is not None and out["generalized_step"] is not None:
        norm = m[cols["norm"]]
        after = m[m["step"] >= out["generalized_step"]]
        if after[cols["norm"]].notna().any():
            peak_i = after[cols["norm"]].idxmax()
            peak = float(norm[peak_i])
            fall = peak - float(norm[peak_i:].min())
            out["norm_fall"] = fall / peak if peak > 0 else None  # measured whatever its size
            if peak > 0 and fall >= norm_fall * peak:
                out["cleanup_end_step"] = _first(m, norm <= peak - 0.9 * fall, after=int(m.loc[peak_i, "step"]))
                out["norm_drop"] = fall / peak
            else:
                notes.append(
                    f"no cleanup: {cols['norm']} fell by {fall / peak if peak else 0:.0%} after generalization"
                )
    out["stages_note"] = "; ".join(notes)
    out["stages_columns"] = ",".join(f"{k}={v}" for k, v in cols.items() if v is not None)
    return out


def _onset(m: pd.DataFrame, column: str, fraction: float) -> int | None:
    x = m[column]
    valid = x.dropna()
    if len(valid) < 3:
        return None
    span = float(valid.max() - valid.min())
    if not span > 0:
        return None
    out_ = (valid - valid.iloc[0]).abs() >= fraction * span  # over the evaluations that have the measure
    sustained = out_ & out_.shift(-1, fill_value=True)
    return _first(m.loc[valid.index], sustained)


def learnt_in_distribution(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Per run of a sweep table: whether the in-distribution twin of held-out `metric` (gen_first_word_acc ->
    max_id_first_word_acc) reached ID_LEARNED; every run where the table has no twin."""
    twin = f"max_id_{metric[len('gen_') :]}"
    return runs[twin] >= ID_LEARNED if twin in runs else pd.Series(True, index=runs.index)

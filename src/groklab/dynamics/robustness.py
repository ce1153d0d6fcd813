"""How robust is a training map? Model selection and the detour test repeated over restart seeds and
resamples of the runs (Hu et al. 2023 report one fit; their restarts are unseeded and K was chosen by eye).

    table = map_robustness(runs, convergence, reference, n_fits=50, bootstrap=True)
    table.fits      # one row per fit: K chosen, detours found (Holm and raw p), the strongest detour
    table.states    # one row per state of every fit, with the reference state it matches
    table.summary   # one row per reference state: how often it is matched, and how often it is a detour

Fit i (1..n_fits) is the reference's estimator with `random_state` moved by i * FIT_STRIDE (so no two
fits share a restart seed) and, with `bootstrap`, fitted on a resample of the runs drawn with replacement
from numpy's PCG64 seeded by `seed` + i (a run drawn twice counts twice, under two names).

Matching states across fits: the states of fit i are assigned to the reference's by the Hungarian
assignment (scipy's linear_sum_assignment) on the Euclidean distance between state means in z units
(`means_`, the space the HMM is fitted in: the same for every fit with per-run z-scores); with a
different K, min(K_ref, K_i) pairs are matched and the rest of either side stays unmatched. A reference
state "is a detour in fit i" when its matched state there is one; by the paper's test (p < alpha, r > 0,
`detour_raw`) and by groklab's (Holm-adjusted, `detour`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from groklab.dynamics.detours import detour_test
from groklab.dynamics.hmm import TrainingMap

FIT_STRIDE = 100_000  # > RESTART_STRIDE * max_states + restarts: fits never share a restart seed


@dataclass
class Robustness:
    fits: pd.DataFrame
    states: pd.DataFrame
    summary: pd.DataFrame


def match_states(reference: np.ndarray, other: np.ndarray) -> dict[int, int]:
    """{reference state: other state} by the Hungarian assignment on the distance between state means
    (rows: states, columns: features, in the same units)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.linalg.norm(reference[:, None, :] - other[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def _match(reference: TrainingMap, model: TrainingMap) -> dict[int, int]:
    """match_states on the features both fits kept (a fit may drop a column constant in its runs)."""
    common = [f for f in reference.features_ if f in model.features_]
    pick = lambda tm: tm.means_[:, [list(tm.features_).index(f) for f in common]]  # noqa: E731
    return match_states(pick(reference), pick(model))


def map_robustness(
    runs: Mapping[object, pd.DataFrame],
    convergence: pd.DataFrame,
    reference: TrainingMap,
    n_fits: int,
    bootstrap: bool = False,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Callable[[str], None] = lambda line: None,
) -> Robustness:
    """Refit `reference`'s estimator `n_fits` times (other restart seeds; with `bootstrap`, resampled runs)
    on `runs` ({seed: metrics table}, those the reference was fitted on), test every fit's states for
    detours against `convergence` (convergence_times of the runs), and match them to the reference's
    states. The reference itself is fit 0."""
    seeds = list(runs)
    conv = convergence.set_index("seed")
    fits, states = [], []
    for i in range(n_fits + 1):
        if i == 0:
            model, names = reference, {s: s for s in seeds}
        else:
            drawn = (
                np.random.default_rng(seed + i).choice(len(seeds), size=len(seeds)) if bootstrap else range(len(seeds))
            )
            names = {j: seeds[k] for j, k in enumerate(drawn)}  # a name per draw -> the run drawn
            params = {**reference.get_params(), "random_state": reference.random_state + FIT_STRIDE * i}
            model = TrainingMap(**params).fit({j: runs[s] for j, s in names.items()})
        table = pd.DataFrame(
            {
                "seed": list(model.paths_),
                "index": [conv.loc[names[j], "index"] for j in model.paths_],
                "censored": [bool(conv.loc[names[j], "censored"]) for j in model.paths_],
            }
        )
        tested = detour_test(model.paths_, table, alpha=alpha)
        tested["detour_raw"] = (tested["p"] < alpha) & (tested["r"] > 0)
        matched = {v: k for k, v in _match(reference, model).items()}
        tested.insert(0, "fit", i)
        tested.insert(2, "reference_state", [matched.get(int(s), math.nan) for s in tested["state"]])
        states.append(tested)
        strongest = tested[tested["detour_raw"]].sort_values("p").head(1)
        fits.append(
            {
                "fit": i,
                "random_state": model.random_state,
                "bootstrap": bool(bootstrap and i > 0),
                "n_states": model.n_states_,
                "n_detours": int(tested["detour"].sum()),
                "n_detours_raw": int(tested["detour_raw"].sum()),
                "r": float(strongest["r"].iloc[0]) if len(strongest) else math.nan,
                "p": float(strongest["p"].iloc[0]) if len(strongest) else math.nan,
            }
        )
        progress(
            f"fit {i} of {n_fits}: K = {model.n_states_}, detours at p < {alpha}: "
            f"{fits[-1]['n_detours_raw']} (Holm: {fits[-1]['n_detours']})"
        )
    fits, states = pd.DataFrame(fits), pd.concat(states, ignore_index=True)
    return Robustness(fits, states, _summary(states, reference.n_states_, n_fits))


def _summary(states: pd.DataFrame, k: int, n_fits: int) -> pd.DataFrame:
    """Per reference state, over the n_fits refits (fit 0, the reference, left out): the share matched, the
    share in which the matched state is a detour (raw p and Holm), and r and p of the matched states."""
    refits = states[(states["fit"] > 0) & states["reference_state"].notna()]
    rows = []
    for state in range(k):
        own = refits[refits["reference_state"] == state]
        r, p = own["r"].dropna(), own["p"].dropna()
        rows.append(
            {
                "reference_state": state,
                "matched": len(own) / n_fits if n_fits else math.nan,
                "detour_raw": own["detour_raw"].sum() / n_fits if n_fits else math.nan,
                "detour": own["detour"].sum() / n_fits if n_fits else math.nan,
                "r_median": r.median() if len(r) else math.nan,
                "r_q25": r.quantile(0.25) if len(r) else math.nan,
                "r_q75": r.quantile(0.75) if len(r) else math.nan,
                "p_median": p.median() if len(p) else math.nan,
            }
        )
    return pd.DataFrame(rows)

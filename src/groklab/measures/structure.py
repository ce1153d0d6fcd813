"""`structure`: one progress measure under one name for every task family that has one — how much of the
structure that generalizes the model has built, from near its initial value to near 1 — so phases and
comparisons read the same column for modular arithmetic, structural language models and sparse parity.

- modular addition: `fourier_mult_fve`, the fraction of the logits' variance (over all p^2 pairs) that the
  Fourier-multiplication circuit cos(w_k(a+b-c)) over the key frequencies explains (Nanda et al. 2023,
  §4.2; measures.progress, key frequencies found in the model measured).
- structural language models (Dyck, question formation, tense inflection): `t_score`, the
  tree-structuredness of the model's computation (Murty et al. 2023, §3.2; measures.tree_projection, on
  TREE_SAMPLE training sentences).
- sparse parity: the share of the first layer's squared weight norm on the k relevant input bits,
  |W1[:, :k]|^2 / |W1|^2 (Barak et al. 2022's progress measure: the weights concentrate on the relevant
  coordinates before the error falls); about k / n_bits at initialization.
Other tasks have none: the measure set says so.
"""

from __future__ import annotations

import torch

from groklab.errors import ConfigError
from groklab.measures.progress import check_modular_addition, progress_measures
from groklab.measures.tree_projection import TASKS as TREE_TASKS
from groklab.measures.tree_projection import analysis_sample, tree_projection

TREE_SAMPLE = 200


def check_structure(task) -> None:
    if task.name == "sparse_parity" or (task.loss == "lm" and task.name in TREE_TASKS):
        return
    try:
        check_modular_addition(task)
    except ConfigError:
        raise ConfigError(
            f"config: measure set 'structure' is defined for modular addition, structural LMs "
            f"({', '.join(TREE_TASKS)}) and sparse parity; task '{task.name}' has none"
        ) from None


def structure(model: torch.nn.Module, task) -> dict[str, float]:
    """{'structure': value} for the task's family (see the module docstring)."""
    if task.name == "sparse_parity":
        return {"structure": relevant_share(model.layers[0].weight, task.params["k"])}
    if task.loss == "lm":
        sentences, gold = analysis_sample(task, TREE_SAMPLE)
        return {"structure": tree_projection(model, sentences, gold, seed=0)["t_score"]}
    return {"structure": progress_measures(model, task, "each")["fourier_mult_fve"]}


def relevant_share(W: torch.Tensor, k: int) -> float:
    """|W[:, :k]|^2 / |W|^2 for a first-layer weight W (hidden, n_bits)."""
    W = W.detach().double()
    return float((W[:, :k] ** 2).sum() / (W**2).sum())

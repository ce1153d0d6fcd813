"""Numerical stability of the softmax (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability",
ICLR 2025, §3, and the diagnostics of its released code).

Softmax collapse (SC): once the correct logit exceeds the others by enough, exp of every other logit
(shifted by the maximum) is absorbed when added to 1, so sum_j exp(x_j - max x) == 1 exactly in the
float type; that example's loss is then exactly 0 and its gradient vanishes, and learning stalls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from groklab.errors import ConfigError


def softmax_collapse(logits: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Share of rows whose softmax denominator sum_j exp(x_j - max_j x) equals 1 exactly in `dtype`
    (the released `softmax_collapse`). logits (n, classes)."""
    x = logits.detach().to(dtype)
    total = torch.exp(x - x.max(-1, keepdim=True).values).sum(-1)
    return float((total == 1).double().mean()) if len(x) else float("nan")


def zero_terms(logits: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Share of examples whose cross-entropy is exactly 0 in `dtype` (the released `zero_terms`)."""
    losses = F.cross_entropy(logits.detach().to(dtype), labels, reduction="none")
    return float((losses == 0).double().mean()) if len(losses) else float("nan")


STABILITY_EXAMPLES = 4096  # training examples (a language model's: sequences) the measure set looks at


@torch.no_grad()
def stability(model: torch.nn.Module, task) -> dict:
    """`softmax_collapse` and `zero_terms` on the first STABILITY_EXAMPLES training examples (a language
    model's non-padding tokens), over all the logits the loss sees, in float32 and (`_f64`) float64."""
    was_training = model.training
    model.eval()
    inputs, labels = task.train.inputs[:STABILITY_EXAMPLES], task.train.labels[:STABILITY_EXAMPLES]
    logits = task.outputs(model, inputs)
    model.train(was_training)
    if task.loss == "lm":
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
    return {
        "softmax_collapse": softmax_collapse(logits),
        "zero_terms": zero_terms(logits, labels),
        "softmax_collapse_f64": softmax_collapse(logits, torch.float64),
        "zero_terms_f64": zero_terms(logits, labels, torch.float64),
    }


def check_stability(task) -> None:
    if task.loss == "hinge":
        raise ConfigError(
            f"config: measure set 'stability' needs a softmax over classes; task '{task.name}' "
            "has a single hinge output"
        )

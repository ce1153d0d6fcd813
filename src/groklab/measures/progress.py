"""Progress measures for modular addition, computed from a model and its task (Nanda et al. 2023).

Source: Nanda et al., "Progress measures for grokking via mechanistic interpretability" (ICLR 2023),
§5.1 and App. C-D; their released code and the TransformerLens grokking demo
(`../shared/spec/progress-measures.md` §5-7). Where the two differ, both variants are here under
distinct names:

- `restricted_*` / `excluded_*` ablate at the logits, as the released code does: restricted keeps only
  the key frequencies' cos/sin(w(a+b)) directions of the logits over all p^2 inputs plus the constant
  (the code's bias correction), scored on all pairs; excluded removes those directions, scored on the
  training pairs.
- `*_mlp` ablate the same directions in the MLP neuron activations at `=` and run the rest of the
  real forward pass (the TransformerLens demo's site); restricted adds the grid mean back.
- `fourier_mult_*`: the 3-D fit of the logits by cos(w_k(a+b-c)) over the key frequencies
  (coefficients alpha_k = <C_k, L> with C_k of unit norm, paper §4.2): the loss of those
  replacement logits on all pairs, the fraction of logit variance they explain, and the loss of the
  logits without them on the training pairs.

Losses are float64 cross-entropy over the p answer classes; accuracies take the argmax over them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from groklab.errors import ConfigError
from groklab.measures.fourier import (
    component_norms,
    fourier_basis,
    frequency_fve,
    frequency_norms,
    gini,
    key_frequencies,
)

KeyFreqs = str | Sequence[int]  # "each": recomputed from this model by `rule`; or given


def check_modular_addition(task) -> int:
    """p of a modular-addition task with an odd prime modulus; a ConfigError for anything else."""
    p = task.params.get("p")
    if task.name != "add" or p is None or not task.vocab:
        raise ConfigError(
            f"Fourier progress measures apply to modular addition (task 'add'); "
            f"task '{task.name}' has no Fourier circuit to measure: remove measures 'fourier'"
        )
    if p < 3 or p % 2 == 0 or any(p % d == 0 for d in range(3, int(p**0.5) + 1, 2)):
        raise ConfigError(f"Fourier progress measures need an odd prime modulus; task.p={p}")
    return p


def sum_directions(p: int) -> torch.Tensor:
    """(p*p, p-1) unit grids of cos(w_k(a+b)) and sin(w_k(a+b)), columns [cos 1, sin 1, cos 2, ...]."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    w = 2 * math.pi * torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64) / p
    angle = w[None, :] * (a + b)[:, None]  # (p*p, K)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1).flatten(1) / (p / math.sqrt(2))


def project(x: torch.Tensor, directions: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The part of x (p*p, n) along the sum directions of `freqs`: sum_k P_k(x)."""
    cols = [c for k in freqs for c in (2 * k - 2, 2 * k - 1)]
    U = directions[:, cols]
    return U @ (U.T @ x)


def score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    logits = logits.double()
    return F.cross_entropy(logits, labels).item(), (logits.argmax(-1) == labels).double().mean().item()


def cos3d_coefficients(L: torch.Tensor, p: int) -> torch.Tensor:
    """alpha_k = <C_k, L> for k = 1 .. (p-1)/2, C_k[(a,b), c] = cos(w_k(a+b-c)) scaled to unit norm."""
    D = sum_directions(p) * (p / math.sqrt(2))  # unnormalised cos/sin(w(a+b))
    c = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi * torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64) / p
    cos_c, sin_c = torch.cos(w[:, None] * c), torch.sin(w[:, None] * c)  # (K, p)
    proj = D.T @ L.double()  # (2K, p)
    inner = (proj[0::2] * cos_c).sum(1) + (proj[1::2] * sin_c).sum(1)  # cos(x-y) = cos x cos y + sin x sin y
    return inner / math.sqrt(p**3 / 2)


def cos3d_logits(alpha: torch.Tensor, freqs: Sequence[int], p: int) -> torch.Tensor:
    """sum_{k in freqs} alpha_k C_k as (p*p, p) logits."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    c = torch.arange(p, dtype=torch.float64)
    out = torch.zeros(p * p, p, dtype=torch.float64)
    for k in freqs:
        out += alpha[k - 1] * torch.cos(2 * math.pi * k * ((a + b)[:, None] - c[None, :]) / p)
    return out / math.sqrt(p**3 / 2)


def _grid(model, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Every input [a, b, =] (row a*p + b), its label, the logits at `=` over the p answers and the
    last block's MLP activations at `=`."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    device = next(model.parameters()).device
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1).to(device)
    last = f"blocks.{len(model.blocks) - 1}"
    logits, cache = model.run_with_cache(tokens, at=-1, names=[f"{last}.mlp.hook_post"])
    acts = cache[f"{last}.mlp.hook_post"][:, -1]  # (p*p, d_mlp), model precision
    return tokens, ((a + b) % p).to(device), logits[:, :p].double(), acts, last


@torch.no_grad()
def model_key_frequencies(
    model,
    task,
    method: str = "neuron_argmax",
    min_fve: float = 0.85,
    min_share: float = 0.01,
    rel_threshold: float = 0.1,
) -> list[int]:
    """The key frequencies of a modular-addition model by `method` (see `key_frequencies`)."""
    p = check_modular_addition(task)
    was_training = model.training
    model.eval()
    basis = fourier_basis(p)
    _, _, _, acts, last = _grid(model, p)
    sd = model.state_dict()
    W_L = (sd[f"{last}.mlp.W_out"] @ sd["unembed.W_U"][:, :p]).T.double()
    we_norms = frequency_norms(component_norms(sd["embed.W_E"][:p].double(), basis))
    model.train(was_training)
    return key_frequencies(
        frequency_fve(acts.cpu(), basis),
        frequency_norms(component_norms(W_L, basis)),
        method,
        min_fve,
        min_share,
        rel_threshold,
        we_norms=we_norms,
    )


@torch.no_grad()
def progress_measures(
    model,
    task,
    key_freqs: KeyFreqs = "each",
    method: str = "neuron_argmax",
    min_fve: float = 0.85,
    min_share: float = 0.01,
    rel_threshold: float = 0.1,
    per_frequency: bool = False,
) -> dict:
    """Every progress measure of a modular-addition model, as metric columns.

    `key_freqs`: "each" finds them in this model by `method` (see `key_frequencies`), or a list
    given (e.g. the final model's, as the paper does). The set used is reported in `key_freqs`.
    """
    p = check_modular_addition(task)
    was_training = model.training
    model.eval()
    basis = fourier_basis(p)
    tokens, labels, L, acts, last = _grid(model, p)  # L (p*p, p), acts (p*p, d_mlp)
    device = tokens.device
    train = task.train.index.to(device)
    sd = model.state_dict()
    W_L = (sd[f"{last}.mlp.W_out"] @ sd["unembed.W_U"][:, :p]).T.double()  # (p, d_mlp)
    wl_norms = component_norms(W_L, basis)
    fve = frequency_fve(acts.cpu(), basis)  # (d_mlp, K)
    we_norms = component_norms(sd["embed.W_E"][:p].double(), basis)
    if key_freqs == "each":
        freqs = key_frequencies(
            fve,
            frequency_norms(wl_norms),
            method,
            min_fve,
            min_share,
            rel_threshold,
            we_norms=frequency_norms(we_norms),
        )
    else:
        freqs = key_frequencies(method="given", given=key_freqs)
    if any(not 1 <= k <= (p - 1) // 2 for k in freqs):
        raise ConfigError(f"key frequencies must lie in 1..{(p - 1) // 2} for p={p}, got {list(freqs)}")

    directions = sum_directions(p).to(device)
    kept = project(L, directions, freqs)
    row = {
        "key_freqs": ",".join(map(str, freqs)),
        "n_key_freqs": len(freqs),
        "frac_neurons_explained": (fve.max(1).values > 0.85).double().mean().item(),
    }
    row["restricted_loss"], row["restricted_acc"] = score(kept + L.mean(0, keepdim=True), labels)
    row["excluded_loss"], row["excluded_acc"] = score((L - kept)[train], labels[train])

    # the same ablations on the neuron activations (in the model's precision), through the rest of the real forward pass
    hook = f"{last}.mlp.hook_post"
    cols = [c for k in freqs for c in (2 * k - 2, 2 * k - 1)]
    U = directions[:, cols].to(acts.dtype)  # (p*p, 2 |freqs|)
    coef = U.T @ acts  # (2 |freqs|, d_mlp)
    for name, patched, rows in (
        ("restricted", U @ coef + acts.mean(0, keepdim=True), slice(None)),
        ("excluded", acts[train] - U[train] @ coef, train),
    ):
        with model.hooks({hook: lambda post, new=patched: new[:, None]}):
            out = model(tokens[rows], at=-1)[:, :p]
        row[f"{name}_loss_mlp"], row[f"{name}_acc_mlp"] = score(out, labels[rows])

    row["gini_W_E"] = gini(we_norms)
    row["gini_W_L"] = gini(wl_norms)

    alpha = cos3d_coefficients(L.cpu(), p)
    fit = cos3d_logits(alpha, freqs, p).to(device)
    centred = L - L.mean(1, keepdim=True)
    row["fourier_mult_loss"], row["fourier_mult_acc"] = score(fit, labels)
    row["fourier_mult_fve"] = float((alpha[[k - 1 for k in freqs]] ** 2).sum() / (centred**2).sum())
    row["fourier_mult_excluded_loss"], row["fourier_mult_excluded_acc"] = score((L - fit)[train], labels[train])
    if per_frequency:
        for k in range(1, (p - 1) // 2 + 1):
            row[f"excluded_loss_f{k}"], _ = score((L - project(L, directions, [k]))[train], labels[train])
    model.train(was_training)
    return row


@torch.no_grad()
def neuron_clusters(model, task, threshold: float = 0.85) -> dict:
    """Each MLP neuron's best frequency and its variance explained (the R^2 of the degree-2
    trigonometric polynomial of that frequency, see `frequency_fve`); neurons below `threshold` form
    cluster -1 ("unexplained"), as in the paper's App. D. Returns {'freq': (d_mlp,), 'fve': (d_mlp,),
    'clusters': {freq: n_neurons}}."""
    p = check_modular_addition(task)
    fve = frequency_fve(_grid(model, p)[3].cpu(), fourier_basis(p))
    best_fve, best = fve.max(1)
    freq = torch.where(best_fve > threshold, best + 1, torch.full_like(best, -1))
    values, counts = torch.unique(freq, return_counts=True)
    return {"freq": freq, "fve": best_fve, "clusters": dict(zip(values.tolist(), counts.tolist()))}

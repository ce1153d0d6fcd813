"""The Fourier basis over Z_p and what Nanda et al. 2023 read from it.

Source: Nanda, Chan, Lieberum, Smith, Steinhardt, "Progress measures for grokking via mechanistic
interpretability" (ICLR 2023), §4-5 and App. C-D, and their released code (`progress-measures-paper`,
`helpers.py`, `Grokking_Analysis.ipynb`); `../shared/spec/progress-measures.md` §4-5.

Basis: row 0 is the constant 1/sqrt(p); rows 2k-1 and 2k are cos(2 pi k x / p) and sin(2 pi k x / p)
times sqrt(2/p), k = 1 .. (p-1)/2, so odd rows are cosines (the notebook's bar plot swaps the labels;
we do not). p must be odd: then the basis is square and orthonormal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from groklab.errors import ConfigError


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(p, p) orthonormal basis: constant, then cos / sin of frequency k for k = 1 .. (p-1)/2."""
    if p < 3 or p % 2 == 0:
        raise ConfigError(f"the Fourier basis over Z_p needs an odd p >= 3, got p={p}")
    x = torch.arange(p, dtype=dtype)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=dtype)]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * math.pi * k / p
        rows += [torch.cos(w * x) * math.sqrt(2 / p), torch.sin(w * x) * math.sqrt(2 / p)]
    return torch.stack(rows)


def basis_names(p: int) -> list[str]:
    return ["const"] + [f"{fn} {k}" for k in range(1, (p - 1) // 2 + 1) for fn in ("cos", "sin")]


def fft1d(x: torch.Tensor, basis: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Coefficients of x along `dim` (length p) in the basis."""
    return torch.movedim(torch.movedim(x, dim, -1) @ basis.T.to(x.dtype), -1, dim)


def fft2d(grid: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """grid (p*p, ...) over inputs (a, b) with row a*p + b -> coefficients (p, p, ...): F G F^T per channel."""
    p = basis.shape[0]
    g = grid.reshape(p, p, -1).to(basis.dtype)  # (a, b, z) in the basis' precision
    t = (basis @ g.reshape(p, -1)).reshape(p, p, -1)  # (i, b, z): over a
    out = (basis @ t.transpose(0, 1).reshape(p, -1)).reshape(p, p, -1)  # (j, i, z): over b
    return out.transpose(0, 1).reshape(p, p, *grid.shape[1:])


def frequency_fve(grid: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(p*p, n) activations -> (n, (p-1)/2): each unit's fraction of variance explained by frequency k.

    The variance in the 3x3 block {const, cos k, sin k}^2 of its centred 2-D Fourier transform: the R^2
    of the best degree-2 trigonometric polynomial in w_k = 2 pi k / p of (a, b) (terms 1, cos w_k a,
    sin w_k a, cos w_k b, ..., sin w_k a sin w_k b). Units with no variance get 0.
    """
    p = basis.shape[0]
    coef = fft2d(grid - grid.mean(0), basis.to(grid.dtype)) ** 2  # (p, p, n), in the grid's precision
    total = coef.sum((0, 1))  # (n,)
    ks = torch.arange(1, (p - 1) // 2 + 1)
    idx = torch.stack([torch.zeros_like(ks), 2 * ks - 1, 2 * ks], 1)  # (K, 3): const, cos k, sin k
    block = coef[idx[:, :, None], idx[:, None, :]].sum((1, 2))  # (K, n)
    return torch.where(total > 0, block / total.clamp_min(1e-30), torch.zeros_like(block)).T.double()


def component_norms(W: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """W (p, d): one row per residue -> (p,) norm of each Fourier component, constant first."""
    return (basis.to(W.dtype) @ W).norm(dim=1)


def frequency_norms(norms: torch.Tensor) -> torch.Tensor:
    """(p,) component norms -> ((p-1)/2,) norm of each frequency (its cos and sin together)."""
    return (norms[1::2] ** 2 + norms[2::2] ** 2).sqrt()


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (Hurley & Rickard 2009): 0 for a constant vector,
    1 - 1/N for a one-hot vector of length N. G = 1 - 2 sum_i (c_(i) / |c|_1) (N - i + 1/2) / N."""
    c = values.double().flatten().abs().sort().values
    n = len(c)
    if c.sum() == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(1 - 2 * ((c / c.sum()) * (n - i + 0.5) / n).sum())


def key_frequencies(
    fve: torch.Tensor | None = None,
    wl_norms: torch.Tensor | None = None,
    method: str = "neuron_argmax",
    min_fve: float = 0.85,
    min_share: float = 0.01,
    rel_threshold: float = 0.1,
    given: Sequence[int] | None = None,
    we_norms: torch.Tensor | None = None,
) -> list[int]:
    """The frequencies the model computes with, by one documented rule:

    - "neuron_argmax" (the released code, made robust): each MLP neuron's best frequency by variance
      explained (`frequency_fve`); a frequency is key when it is the best one of at least `min_share`
      of the neurons that it explains to at least `min_fve`. (The released code takes every distinct
      argmax with no threshold, which lets a single noisy neuron add a frequency.)
    - "wl_norm" (the paper, App. C.2: frequencies with "non-trivial" coefficients in W_L): frequencies
      whose norm in W_L = W_out W_U is at least `rel_threshold` of the largest.
    - "we_norm" (the paper, §4.1: the embedding is sparse in the Fourier basis): the same on W_E.
    - "given": exactly `given`.
    """
    if method == "given":
        return sorted(set(int(k) for k in given or []))
    if method in ("wl_norm", "we_norm"):
        norms = wl_norms if method == "wl_norm" else we_norms
        return [int(k) + 1 for k in torch.nonzero(norms >= rel_threshold * norms.max()).flatten()]
    if method != "neuron_argmax":
        raise ConfigError(f"unknown key-frequency method '{method}'; use neuron_argmax, wl_norm, we_norm or given")
    best_fve, best = fve.max(1)
    clean = best[best_fve >= min_fve]
    counts = torch.bincount(clean, minlength=fve.shape[1])
    return [int(k) + 1 for k in torch.nonzero(counts >= max(1, min_share * fve.shape[0])).flatten()]

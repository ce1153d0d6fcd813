"""The 14 per-checkpoint weight statistics of Hu et al. 2023, "Latent State Models of Training
Dynamics" (Table 1; their released code `modeling-training`, stage 00; spec training-maps.md §3).

Per 2-D weight matrix W: l1 = sum |w|, l2 = Frobenius norm, trace = sum of the main diagonal (also
for rectangular W), spectral = largest singular value, code_sparsity = l1 / l2,
computational_sparsity = trace / spectral, mean_lambda and variance_lambda = mean and variance
(Bessel-corrected, as the fitted models used; NaN for a single singular value) of the singular values
after those below 1e-5 are set to 0. Per 4-D conv kernel: the mean over its (out, in) slices of L1,
L2 and L1/L2. A matrix with NaN or inf gives NaN.

Which tensors (§3.2): a transformer contributes, per layer, each head's W_Q, W_K, W_V as separate
matrices plus W_O, W_in and W_out (15 matrices per layer for 4 heads; embeddings, unembedding and
LayerNorm excluded); an MLP every Linear weight; a ResNet-18 its stem and block convs (downsample
convs and BatchNorm excluded) and fc. Aggregation (§3.3): every matrix metric is the unweighted mean
over matrices (nanmean for variance_lambda); for a CNN, l1 / l2 / code_sparsity average kernels and
matrices together and the other matrix metrics come from fc alone. mean_w / median_w (the lower
median) / var_w (Bessel) and mean_b / median_b / var_b are over the included weights and biases
concatenated (a transformer: its MLP biases and any attention biases; a ResNet: fc's bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from groklab.config import WEIGHT_STATISTICS
from groklab.models import MLP, ResNet18, Transformer

FEATURES = WEIGHT_STATISTICS  # the column names, in order (named in the config layer for the maps too)
MATRIX_KEYS = FEATURES[:8]
NAN = math.nan


def matrix_stats(W: torch.Tensor) -> dict[str, float]:
    """The eight matrix statistics of one 2-D weight."""
    W = W.detach().double()
    if not torch.isfinite(W).all():
        return {key: NAN for key in MATRIX_KEYS}
    sv = torch.linalg.svdvals(W)
    sv = torch.where(sv < 1e-5, torch.zeros_like(sv), sv)
    l1, l2, trace, spectral = W.abs().sum().item(), W.norm().item(), torch.diagonal(W).sum().item(), sv.max().item()
    return {
        "l1": l1,
        "l2": l2,
        "trace": trace,
        "spectral": spectral,
        "code_sparsity": l1 / l2 if l2 else NAN,
        "computational_sparsity": trace / spectral if spectral else NAN,
        "mean_lambda": sv.mean().item(),
        "variance_lambda": sv.var(correction=1).item() if len(sv) > 1 else NAN,
    }


def kernel_stats(W: torch.Tensor) -> dict[str, float]:
    """Mean L1, L2 and L1/L2 over the (out, in) slices of a conv kernel (out, in, kh, kw)."""
    W = W.detach().double()
    if not torch.isfinite(W).all():
        return {"l1": NAN, "l2": NAN, "code_sparsity": NAN}
    slices = W.flatten(2)  # (out, in, kh * kw)
    l1, l2 = slices.abs().sum(-1), slices.norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.full_like(l1, NAN))
    return {"l1": l1.mean().item(), "l2": l2.mean().item(), "code_sparsity": torch.nanmean(ratio).item()}


def included_tensors(model: torch.nn.Module) -> tuple[list, list, list, list]:
    """(matrices, kernels, weights, biases) the statistics are taken over, by model type (§3.2)."""
    matrices, kernels, biases = [], [], []
    if isinstance(model, Transformer):
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            for W in (attn.W_Q, attn.W_K, attn.W_V):
                matrices += list(W)  # one (d_model, d_head) matrix per head
            matrices += [attn.W_O.flatten(0, 1), mlp.W_in, mlp.W_out]  # W_O as (heads * d_head, d_model)
            biases += [b for b in (attn.b_Q, attn.b_K, attn.b_V, attn.b_O, mlp.b_in, mlp.b_out) if b is not None]
        weights = matrices
    elif isinstance(model, MLP):
        matrices = [layer.weight for layer in model.layers]
        biases = [layer.bias for layer in model.layers if layer.bias is not None]
        weights = matrices
    elif isinstance(model, ResNet18):
        kernels = [p for name, p in model.named_parameters() if p.dim() == 4 and "downsample" not in name]
        matrices, biases = [model.fc.weight], [model.fc.bias]
        weights = kernels + matrices
    else:
        raise TypeError(f"no weight statistics for {type(model).__name__}")
    return matrices, kernels, weights, biases


def aggregate_matrix_stats(per_matrix: Sequence[dict], per_kernel: Sequence[dict] = ()) -> dict[str, float]:
    """The eight matrix features of one checkpoint from its matrices' (and kernels') `matrix_stats` /
    `kernel_stats` (§3.3): the unweighted mean over them; nanmean for variance_lambda, NaN for the others
    where any is NaN."""
    row = {}
    for key in MATRIX_KEYS:
        values = [s[key] for s in per_matrix] + [s[key] for s in per_kernel if key in s]
        finite = [v for v in values if not math.isnan(v)]
        row[key] = (
            sum(finite) / len(finite) if finite and (key == "variance_lambda" or len(finite) == len(values)) else NAN
        )
    return row


@torch.no_grad()
def distribution_stats(tensors: Callable[[], Iterable[torch.Tensor]]) -> dict[str, float]:
    """{"mean", "median", "var"} of the values of several tensors taken together, as `weight_statistics`
    computes mean_w / median_w / var_w (the lower median; Bessel's variance), without concatenating them:
    `tensors()` gives a fresh iterable of the tensors and is called once per pass (two for float32, four for
    float64 values), and only one tensor is held at a time, so the memory is that of the largest tensor
    (the importers read a 110M-parameter checkpoint this way). The mean and variance are accumulated in
    float64 (Chan et al.'s pairwise update); the median is exact, found by a radix selection over the
    values' order-preserving integer keys, 16 bits per pass. NaN for all three if any value is not finite
    or there are no values (the variance: fewer than two)."""
    n, mean, m2, wide = 0, 0.0, 0.0, False
    for t in tensors():
        t = t.detach()
        if not torch.isfinite(t).all():
            return {"mean": NAN, "median": NAN, "var": NAN}
        wide |= t.dtype == torch.float64
        x = t.double().flatten()
        k = len(x)
        if k == 0:
            continue
        mean_k = x.mean().item()
        m2_k = (x - mean_k).square().sum().item()
        delta, total = mean_k - mean, n + k
        mean, m2, n = mean + delta * k / total, m2 + m2_k + delta * delta * n * k / total, total
    if n == 0:
        return {"mean": NAN, "median": NAN, "var": NAN}
    median = _radix_select(tensors, (n - 1) // 2, 64 if wide else 32)
    return {"mean": mean, "median": median, "var": m2 / (n - 1) if n > 1 else NAN}


def _sortable_keys(t: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 keys ordered as the float values (float16 / bfloat16 / float32 exactly via float32's bits)."""
    if bits == 64:
        b = t.detach().double().flatten().view(torch.int64)
    else:
        b = t.detach().float().flatten().view(torch.int32).long()  # sign-extended
    return torch.where(b < 0, b ^ ((1 << (bits - 1)) - 1), b)  # negative floats: magnitude bits flipped


def _radix_select(tensors: Callable[[], Iterable[torch.Tensor]], rank: int, bits: int) -> float:
    """The value of 0-based `rank` in the sorted values of all the tensors, 16 key bits per pass."""
    prefix = None  # the selected value's key >> (shift + 16), once the top digit is known
    for shift in range(bits - 16, -1, -16):
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        for t in tensors():
            keys = _sortable_keys(t, bits)
            if prefix is not None:
                keys = keys[(keys >> (shift + 16)) == prefix]
            digits = (keys >> shift) + (1 << 15) if prefix is None else (keys >> shift) & 0xFFFF
            counts += torch.bincount(digits, minlength=1 << 16)
        below = torch.cumsum(counts, 0)
        digit = int(torch.searchsorted(below, torch.tensor(rank), right=True))
        rank -= int(below[digit - 1]) if digit else 0
        prefix = digit - (1 << 15) if prefix is None else (prefix << 16) | digit
    key = prefix if prefix >= 0 else prefix ^ ((1 << (bits - 1)) - 1)
    value = torch.tensor([key], dtype=torch.int64)
    return float(value.view(torch.float64) if bits == 64 else value.to(torch.int32).view(torch.float32))


@torch.no_grad()
def weight_statistics(model: torch.nn.Module) -> dict[str, float]:
    """The 14 features of Hu et al. (their 'base' HMM feature set) for one checkpoint."""
    matrices, kernels, weights, biases = included_tensors(model)
    row = aggregate_matrix_stats([matrix_stats(W) for W in matrices], [kernel_stats(W) for W in kernels])
    for suffix, tensors in (("w", weights), ("b", biases)):
        flat = (
            torch.cat([t.detach().double().flatten() for t in tensors])
            if tensors
            else torch.empty(0, dtype=torch.float64)
        )
        row[f"mean_{suffix}"] = flat.mean().item() if len(flat) else NAN
        row[f"median_{suffix}"] = flat.median().item() if len(flat) else NAN
        row[f"var_{suffix}"] = flat.var(correction=1).item() if len(flat) > 1 else NAN
    return row

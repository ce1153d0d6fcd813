"""Interventions around the optimizer step: the follow-ups that change *when* grokking happens.

- `GrokfastEMA`, `GrokfastMA` — Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow
  Gradients" (arXiv 2405.20233), Algorithms 1 and 2, as in the released `grokfast.py` (ironjr/grokfast):
  a low-pass filter of the gradient sequence, amplified and added back to the gradient.
- `OrthoGrad` — Prieto et al. 2025, "Grokking at the Edge of Numerical Stability" (ICLR 2025), §5, ⊥Grad as
  in the released `OrthoGrad` optimizer: each weight tensor's gradient without its component along the
  weights, rescaled to the gradient's norm, then the base optimizer's step.
- `NormConstraint` — Liu et al. 2023, "Omnigrok" (ICLR 2023), §3 ("constrained optimization"): training on
  the sphere of a fixed total weight norm, every parameter rescaled after each step (and at the start).

The trainer calls three hook points: `start(params)` once before a fresh run's first evaluation,
`after_backward(params)` between backward and the optimizer step (gradients changed in place, before
gradient clipping), `after_step(params)` after the optimizer step (weights changed in place), with
`params` the model's named parameters in registration order. `state_dict()` / `load_state_dict()` hold
everything a filter remembers as flat tensors, saved in every checkpoint: a resumed run continues bit for bit.

Stacked (`stacked=True`, a population of runs, groklab.training.population): every parameter has a leading
member dimension, and what one run computes per tensor (⊥Grad's projection, the norm constraint's total norm
and target) is computed per member; the filters are elementwise and unchanged. `MEMBER_DIMS` says where the
member dimension is in each state tensor (None: one value for all members), so `member_states` slices a
member's state out in the single run's layout and `stack_states` builds a population's from its members'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from groklab.config import TrainConfig

Params = Sequence[tuple[str, torch.nn.Parameter]]


class Intervention:
    name = "intervention"
    MEMBER_DIMS: dict[str, int | None] = {}  # state key prefix -> its member dimension when stacked
    stacked = False

    def start(self, params: Params) -> None: ...
    def after_backward(self, params: Params) -> None: ...
    def after_step(self, params: Params) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class GrokfastEMA(Intervention):
    """mu <- alpha mu + (1 - alpha) g (mu starts at the first gradient), then g <- g + lamb mu
    (`gradfilter_ema`); `normalize`: g / (1 + lamb) afterwards, so a constant gradient keeps its size."""

    name = "grokfast"
    MEMBER_DIMS = {"mu.": 0}

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0, normalize: bool = False):
        self.alpha, self.lamb, self.normalize = alpha, lamb, normalize
        self.mu: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def after_backward(self, params: Params) -> None:
        for name, p in params:
            if p.grad is None:
                continue
            mu = self.mu.get(name)
            self.mu[name] = mu = p.grad.detach().clone() if mu is None else mu
            mu.mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
            p.grad.add_(mu, alpha=self.lamb)
            if self.normalize:
                p.grad.div_(1 + self.lamb)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"mu.{name}": mu for name, mu in self.mu.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mu = {key[3:]: value.clone() for key, value in state.items() if key.startswith("mu.")}


class GrokfastMA(Intervention):
    """g <- g + lamb * mean of the last `window` gradients (this one included), `gradfilter_ma`'s "mean";
    with `warmup`, gradients pass unchanged until the window is full. The window is a ring buffer
    (window, *shape) per parameter, summed in slot order."""

    name = "grokfast"
    MEMBER_DIMS = {"count": None, "window.": 1}  # the window: (window, member, ...)

    def __init__(self, window: int = 100, lamb: float = 5.0, warmup: bool = True, normalize: bool = False):
        self.window, self.lamb, self.warmup, self.normalize = window, lamb, warmup, normalize
        self.buffers: dict[str, torch.Tensor] = {}
        self.count = 0  # gradients seen

    @torch.no_grad()
    def after_backward(self, params: Params) -> None:
        slot, filled = self.count % self.window, min(self.count + 1, self.window)
        self.count += 1
        for name, p in params:
            if p.grad is None:
                continue
            buf = self.buffers.get(name)
            if buf is None:
                self.buffers[name] = buf = torch.zeros((self.window, *p.shape), dtype=p.grad.dtype, device=p.device)
            buf[slot].copy_(p.grad)
            if self.warmup and filled < self.window:
                continue
            p.grad.add_(buf[:filled].sum(0), alpha=self.lamb / filled)
            if self.normalize:
                p.grad.div_(1 + self.lamb)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": torch.tensor(self.count), **{f"window.{name}": buf for name, buf in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.count = int(state.get("count", torch.tensor(0)))
        self.buffers = {key[7:]: value.clone() for key, value in state.items() if key.startswith("window.")}


class OrthoGrad(Intervention):
    """Per weight tensor w with gradient g (flattened): g_perp = g - (w.g / (w.w + 1e-30)) w, then
    g <- g_perp ||g|| / (||g_perp|| + 1e-30) — the released `_orthogonalize_gradients`, the small constants
    guarding w = 0 and g parallel to w."""

    name = "orthograd"

    def __init__(self, stacked: bool = False):
        self.stacked = stacked

    @torch.no_grad()
    def after_backward(self, params: Params) -> None:
        for _, p in params:
            if p.grad is None:
                continue
            if self.stacked:  # (member, n): each member's tensor on its own (one run keeps torch.dot, below)
                w, g = p.detach().flatten(1), p.grad.flatten(1)
                along = (w * g).sum(1, keepdim=True) / ((w * w).sum(1, keepdim=True) + 1e-30)
                ortho = g - along * w
                scale = g.norm(dim=1, keepdim=True) / (ortho.norm(dim=1, keepdim=True) + 1e-30)
                p.grad.copy_((ortho * scale).view_as(p.grad))
                continue
            w, g = p.detach().reshape(-1), p.grad.reshape(-1)
            ortho = g - (torch.dot(w, g) / (torch.dot(w, w) + 1e-30)) * w
            p.grad.copy_((ortho * (g.norm() / (ortho.norm() + 1e-30))).view_as(p.grad))


class NormConstraint(Intervention):
    """The total L2 norm of all parameters (concatenated) held at `target` ("init": the norm the model
    starts with): every parameter multiplied by target / norm at the start and after each step."""

    name = "weight_norm"
    MEMBER_DIMS = {"target": 0}

    def __init__(self, target: float | str = "init", stacked: bool = False):
        self.target: float | torch.Tensor | None = None if target == "init" else float(target)
        self.stacked = stacked  # then a target per member (start: each member's own initial norm)

    @staticmethod
    def norm(params: Params, stacked: bool = False) -> torch.Tensor:
        """The total norm (stacked: per member, (member,)), in float64."""
        if stacked:
            return torch.stack([p.detach().double().pow(2).flatten(1).sum(1) for _, p in params]).sum(0).sqrt()
        return torch.stack([p.detach().double().pow(2).sum() for _, p in params]).sum().sqrt()

    @torch.no_grad()
    def start(self, params: Params) -> None:
        if self.target is None:
            self.target = self.norm(params, True) if self.stacked else float(self.norm(params))
        self.after_step(params)

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        if not self.stacked:
            scale = self.target / float(self.norm(params))
            for _, p in params:
                p.mul_(scale)
            return
        scale = self.target / self.norm(params, True)  # (member,) float64
        for _, p in params:
            p.mul_(scale.view(-1, *[1] * (p.dim() - 1)).to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.target is None else {"target": torch.as_tensor(self.target, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "target" in state:
            self.target = state["target"].clone() if self.stacked else float(state["target"])


def build_interventions(cfg: TrainConfig, stacked: bool = False) -> tuple[Intervention, ...]:
    """The config's interventions in the order they act on a step: the gradient filter, then ⊥Grad (on
    the filtered gradient), then (after the optimizer) the norm constraint. `stacked`: for a population's
    stacked parameters (module doc)."""
    out: list[Intervention] = []
    if cfg.grokfast is not None:
        g = cfg.grokfast
        out.append(
            GrokfastEMA(g.alpha, g.resolved_lamb, g.normalize_lr)
            if g.kind == "ema"
            else GrokfastMA(g.window, g.resolved_lamb, g.warmup, g.normalize_lr)
        )
    if cfg.orthograd:
        out.append(OrthoGrad(stacked))
    if cfg.weight_norm is not None:
        out.append(NormConstraint(cfg.weight_norm, stacked))
    return tuple(out)


def states(hooks: Iterable[Intervention]) -> dict[str, torch.Tensor]:
    """Every intervention's state as one flat dict, keyed NAME.KEY."""
    return {f"{h.name}.{key}": value.detach().clone() for h in hooks for key, value in h.state_dict().items()}


def load_states(hooks: Iterable[Intervention], state: dict[str, torch.Tensor] | None) -> None:
    for h in hooks:
        prefix = f"{h.name}."
        h.load_state_dict({k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)})


def _member_dim(hook: Intervention, key: str) -> int | None:
    return next(dim for prefix, dim in hook.MEMBER_DIMS.items() if key.startswith(prefix))


def member_states(hooks: Iterable[Intervention], i: int) -> dict[str, torch.Tensor]:
    """Member i's state out of stacked interventions, in the single run's layout (`states`)."""
    out = {}
    for h in hooks:
        for key, value in h.state_dict().items():
            dim = _member_dim(h, key)
            out[f"{h.name}.{key}"] = (value if dim is None else value.select(dim, i)).detach().clone()
    return out


def stack_states(hooks: Sequence[Intervention], members: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stacked state of `hooks` from each member's (`states` layout; all at the same step, so they hold
    the same keys): what `load_states` gives the population's interventions."""
    out = {}
    for h in hooks:
        prefix = f"{h.name}."
        for key in [k for k in members[0] if k.startswith(prefix)]:
            dim = _member_dim(h, key[len(prefix) :])
            out[key] = members[0][key] if dim is None else torch.stack([m[key] for m in members], dim)
    return out

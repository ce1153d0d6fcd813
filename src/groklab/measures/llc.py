"""The local learning coefficient (LLC) of a model at its weights w*: how degenerate the loss landscape is
there, i.e. its effective complexity. Lau, Furman, Wang, Murfet, Wei 2023, "Quantifying degeneracy in
singular models via the learning coefficient" (arXiv 2308.12108), eq. (4) and §4; estimated with the
field's library, devinterp (1.3.x, `estimate_learning_coeff_with_summary`, SGLD):

    llc = n_beta * (E_w[L_m(w)] - L_n(w*)),   w ~ exp(-n_beta L_m(w) - gamma / 2 |w - w*|^2)

L_n: the task's training loss (its own objective: mean cross-entropy, or the hinge loss) on the n training
examples at w*; L_m: the same on a minibatch of m of them, averaged over the draws of `chains` SGLD chains
started at w*; gamma: the localization strength; n_beta: the inverse temperature times n, either
devinterp's default m / log m ("batch", the default here) or Lau et al.'s n / log n (beta* = 1 / log n,
n the training examples the chains draw from: "dataset"). The choice matters for large models: the
chains' spread around w* per direction is about 1 / sqrt(n_beta * curvature + gamma), so with m / log m
(9 for a minibatch of 32) and gamma = 100 the chains of a 300k-parameter language model walk out of its
basin (measured on structural-qf-lab: the loss from 0.99 past chance, to 6.9) and the number would measure
the walk, not the basin; hence the basin check and the ladder below.
For a regular model with d parameters the LLC is d / 2, which the estimator finds when gamma is small
against n_beta times the loss's curvature (the test: a linear regression; with gamma > 0 the expectation
is d / 2 * n_beta / (n_beta + gamma) for unit curvature); grokking papers report it rising as a model
memorizes and falling as the circuit that generalizes forms (developmental interpretability).

Calibration, automatic and recorded: the SGLD step size epsilon is chosen on a plateau. Trying EPSILONS
from the largest, a step size is usable when its chains stay finite, level off (the mean loss over the
last quarter of the draws within DRIFT of the rise over the third quarter) and stay in the basin (given
`ceiling`, the loss of knowing nothing -- the model's zero output, i.e. chance: the draws' mean loss
rises less than BASIN of the way from L_n(w*) to it; llc_rise is that fraction); the first usable one
whose estimate agrees within AGREE with the next smaller usable one's is taken (too large a step
inflates the estimate, too small a step has not mixed: where two neighbours agree, neither dominates;
measured on the linear regression, the smaller one is the more biased, low); failing that, the smallest
usable one. None usable (with `escalate`): the same again at the next, tighter setting of `ladder`
(n / log n, the localization x10, then x100); still none: llc is NaN, with the diagnostics of the last
step size tried. Each chain
first takes BURNIN steps that are not averaged. The columns: llc, llc_sd (over the chains), and the
settings and the diagnostics: llc_epsilon, llc_nbeta, llc_gamma, llc_draws, llc_chains, llc_init_loss,
llc_rise, llc_tried (step sizes run to choose one: the cost is that many chains x draws), llc_loss_trace
(the chains' mean loss at every tenth draw, as JSON text).
Deterministic: the chains are seeded (`seed` + chain) and the caller's random state is left as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch

EPSILONS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # tried from the largest
DRAWS, BURNIN, CHAINS, BATCH, GAMMA = 200, 100, 4, 256, 100.0
DRIFT, AGREE, BASIN = 0.1, 0.25, 0.5


def estimate_llc(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epsilons: Sequence[float] = EPSILONS,
    gamma: float = GAMMA,
    draws: int = DRAWS,
    burnin: int = BURNIN,
    chains: int = CHAINS,
    batch_size: int = BATCH,
    nbeta: Literal["dataset", "batch"] | float = "batch",
    escalate: bool = True,
    ceiling: float | None = None,
    seed: int = 0,
) -> dict:
    """The LLC of `model` at its weights, on the training examples (`inputs`, `labels`) under `loss(model,
    x, y)` (a mean over examples). The model is not changed. Returns the columns described above.
    With `escalate`, where no step size is usable at (nbeta, gamma), the chains are tightened along
    `ladder(nbeta, gamma)` until one is; llc_nbeta and llc_gamma record the setting that gave the value."""
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        from groklab.errors import ConfigError

        raise ConfigError("measure set 'llc' needs devinterp: pip install 'groklab[llc]'") from None
    m = min(batch_size, len(inputs))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        init_loss = float(loss(model, inputs, labels))
    data = torch.utils.data.TensorDataset(inputs, labels)

    def evaluate(net, batch):
        return loss(net, batch[0], batch[1]), {}

    def chains_at(epsilon: float, nbeta: float, gamma: float) -> dict | None:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(data, batch_size=m, shuffle=True)
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                return estimate_learning_coeff_with_summary(
                    model,
                    loader,
                    evaluate=evaluate,
                    sampling_method=SGLD,
                    optimizer_kwargs={"lr": epsilon, "localization": gamma, "nbeta": nbeta},
                    num_draws=draws,
                    num_chains=chains,
                    num_burnin_steps=burnin,
                    seed=seed,
                    device=inputs.device,
                    verbose=False,
                    init_loss=torch.tensor(init_loss, device=inputs.device),
                )
        except RuntimeError:  # devinterp stops a chain whose loss is NaN: epsilon too large
            return None

    attempts, last = 0, None
    devices = [torch.cuda.current_device()] if inputs.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        for choice, gamma_ in ladder(nbeta, gamma) if escalate else [(nbeta, gamma)]:
            nbeta_, tried = _nbeta(choice, len(inputs), m), []
            for epsilon in epsilons:
                attempts += 1
                out = chains_at(epsilon, nbeta_, gamma_)
                if out is None:
                    continue
                trace = torch.as_tensor(out["loss/trace"], dtype=torch.float64)  # (chains, draws)
                rise = _rise(trace, init_loss, ceiling)
                if not _levels_off(trace, init_loss) or rise > BASIN:
                    last = (epsilon, nbeta_, gamma_, trace, rise)
                    continue
                tried.append((epsilon, out, trace, rise))
                if len(tried) >= 2 and _agree(tried[-2][1]["llc/mean"], tried[-1][1]["llc/mean"]):
                    tried.pop()  # the larger of the two agreeing step sizes
                    break
            if tried:
                break
    model.train(was_training)
    settings = {"llc_draws": draws, "llc_chains": chains, "llc_init_loss": init_loss, "llc_tried": attempts}
    if not tried:  # the diagnostics of the last step size tried (none: every chain diverged)
        epsilon, nbeta_, gamma_, trace, rise = (
            last if last is not None else (math.nan, nbeta_, gamma_, torch.zeros(0, 0), math.nan)
        )
        return {
            "llc": math.nan,
            "llc_sd": math.nan,
            "llc_epsilon": epsilon,
            "llc_nbeta": nbeta_,
            "llc_gamma": gamma_,
            **settings,
            "llc_rise": rise,
            "llc_loss_trace": _trace_text(trace),
        }
    epsilon, out, trace, rise = tried[-1]
    return {
        "llc": float(out["llc/mean"]),
        "llc_sd": float(out["llc/std"]),
        "llc_epsilon": epsilon,
        "llc_nbeta": nbeta_,
        "llc_gamma": gamma_,
        **settings,
        "llc_rise": rise,
        "llc_loss_trace": _trace_text(trace),
    }


def ladder(nbeta: str | float, gamma: float) -> list[tuple[str | float, float]]:
    """The settings tried in turn while the chains leave the basin or drift at every step size: the one
    asked for, then Lau et al.'s n / log n with the localization 10x, then 100x (each tighter: the
    chains' spread per direction ~ 1 / sqrt(n_beta * curvature + gamma)). Measured on structural-qf-lab
    (6 layers, width 64, seed 0, step 15000): at ("batch", 100) the loss rises past chance (llc_rise
    1.77) at every step size; at ("dataset", 1000) the chains level off 2% of the way to chance, with
    37 and 34 at step sizes 1e-4 and 3e-5."""
    steps = [(nbeta, gamma), ("dataset", 10 * gamma), ("dataset", 100 * gamma)]
    return [s for i, s in enumerate(steps) if s not in steps[:i]]


def _nbeta(choice: str | float, n: int, m: int) -> float:
    if choice in ("dataset", "batch"):
        size = n if choice == "dataset" else m
        return size / math.log(size) if size > 1 else 1.0
    return float(choice)


def _rise(trace: torch.Tensor, init_loss: float, ceiling: float | None) -> float:
    """How far the draws' mean loss rose from L_n(w*) towards `ceiling`, as a fraction (NaN, which passes
    the basin check, without a ceiling above L_n(w*))."""
    if ceiling is None or not ceiling > init_loss:
        return math.nan
    return (float(trace.mean()) - init_loss) / (ceiling - init_loss)


def _trace_text(trace: torch.Tensor) -> str:
    return json.dumps([round(float(v), 6) for v in trace.mean(0)[::10]]) if trace.numel() else "[]"


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= AGREE * max(abs(a), abs(b), 1e-12)


def _levels_off(trace: torch.Tensor, init_loss: float) -> bool:
    """Finite, and the last quarter's mean loss within DRIFT of the rise (third quarter's mean minus the
    initial loss) of the third quarter's, give or take three standard errors of minibatch noise."""
    if not torch.isfinite(trace).all():
        return False
    series = trace.mean(0)  # (draws,) the chains' mean loss per draw
    quarter = len(series) // 4
    third, last = series[2 * quarter : 3 * quarter], series[3 * quarter :]
    noise = math.sqrt(float(third.var()) / len(third) + float(last.var()) / len(last))
    rise = abs(float(third.mean()) - init_loss)
    return abs(float(last.mean() - third.mean())) <= DRIFT * rise + 3 * noise

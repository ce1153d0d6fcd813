"""The local learning coefficient (LLC) of a model at its weights w*: how degenerate the loss landscape is
there, i.e. its effective complexity. Lau, Furman, Wang, Murfet, Wei 2023, "Quantifying degeneracy in
singular models via the learning coefficient" (arXiv 2308.12108), eq. (4) and §4; estimated with the
field's library, devinterp (1.3.x, `estimate_learning_coeff_with_summary`, SGLD):

    llc = n_beta * (E_w[L_m(w)] - L_n(w*)),   w ~ exp(-n_beta L_m(w) - gamma / 2 |w - w*|^2)

L_n: the task's training loss (its own objective: mean cross-entropy, or the hinge loss) on the whole
training set at w*; L_m: the same on a minibatch of m training examples, averaged over the draws of
`chains` SGLD chains started at w*; n_beta = m / log m (devinterp's default inverse temperature);
gamma: the localization strength. For a regular model with d parameters the LLC is d / 2, which the
estimator finds when gamma is small against n_beta times the loss's curvature (the test: a linear
regression; with gamma > 0 the expectation is d / 2 * n_beta / (n_beta + gamma) for unit curvature); grokking papers report it rising as a model memorizes and falling
as the circuit that generalizes forms (developmental interpretability).

Calibration, automatic and recorded: the SGLD step size epsilon is chosen on a plateau. Trying EPSILONS
from the largest, a step size is usable when its chains stay finite and level off (the mean loss over
the last quarter of the draws within DRIFT of the rise over the third quarter); the first usable one
whose estimate agrees within AGREE with the next smaller usable one's is taken (too large a step
inflates the estimate, too small a step has not mixed: where two neighbours agree, neither dominates;
measured on the linear regression, the smaller one is the more biased, low); failing that, the smallest
usable one. Each chain first takes
BURNIN steps that are not averaged. The columns: llc, llc_sd (over the chains), and
the settings and the diagnostic: llc_epsilon, llc_nbeta, llc_gamma, llc_draws, llc_chains,
llc_init_loss, llc_tried (step sizes run to choose one: the cost is that many chains x draws), llc_loss_trace
(the chains' mean loss at every tenth draw, as JSON text).
Deterministic: the chains are seeded (`seed` + chain) and the caller's random state is left as it was.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from typing import Callable, Optional, Sequence

import torch

EPSILONS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # tried from the largest
DRAWS, BURNIN, CHAINS, BATCH, GAMMA = 200, 100, 4, 256, 100.0
DRIFT, AGREE = 0.1, 0.25


def estimate_llc(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                 loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], *,
                 epsilons: Sequence[float] = EPSILONS, gamma: float = GAMMA, draws: int = DRAWS, burnin: int = BURNIN,
                 chains: int = CHAINS,
                 batch_size: int = BATCH, nbeta: Optional[float] = None, seed: int = 0) -> dict:
    """The LLC of `model` at its weights, on the training examples (`inputs`, `labels`) under `loss(model,
    x, y)` (a mean over examples). The model is not changed. Returns the columns described above."""
    try:
        from devinterp.optim.sgld import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        from groklab.errors import ConfigError

        raise ConfigError("measure set 'llc' needs devinterp: pip install 'groklab[llc]'") from None
    m = min(batch_size, len(inputs))
    nbeta = nbeta if nbeta is not None else (m / math.log(m) if m > 1 else 1.0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        init_loss = float(loss(model, inputs, labels))
    data = torch.utils.data.TensorDataset(inputs, labels)

    def evaluate(net, batch):
        return loss(net, batch[0], batch[1]), {}

    tried, attempts = [], 0
    devices = [torch.cuda.current_device()] if inputs.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        for epsilon in epsilons:
            attempts += 1
            torch.manual_seed(seed)
            loader = torch.utils.data.DataLoader(data, batch_size=m, shuffle=True)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    out = estimate_learning_coeff_with_summary(
                        model, loader, evaluate=evaluate, sampling_method=SGLD,
                        optimizer_kwargs={"lr": epsilon, "localization": gamma, "nbeta": nbeta},
                        num_draws=draws, num_chains=chains, num_burnin_steps=burnin, seed=seed, device=inputs.device, verbose=False,
                        init_loss=torch.tensor(init_loss, device=inputs.device))
            except RuntimeError:  # devinterp stops a chain whose loss is NaN: epsilon too large
                continue
            trace = torch.as_tensor(out["loss/trace"], dtype=torch.float64)  # (chains, draws)
            if not _levels_off(trace, init_loss):
                continue
            tried.append((epsilon, out, trace))
            if len(tried) >= 2 and _agree(tried[-2][1]["llc/mean"], tried[-1][1]["llc/mean"]):
                tried.pop()  # the larger of the two agreeing step sizes
                break
    model.train(was_training)
    if not tried:
        return {"llc": math.nan, "llc_sd": math.nan, "llc_epsilon": math.nan, "llc_nbeta": nbeta, "llc_gamma": gamma,
                "llc_draws": draws, "llc_chains": chains, "llc_init_loss": init_loss, "llc_loss_trace": "[]"}
    epsilon, out, trace = tried[-1]
    mean = trace.mean(0)
    return {"llc": float(out["llc/mean"]), "llc_sd": float(out["llc/std"]), "llc_epsilon": epsilon, "llc_nbeta": nbeta,
            "llc_gamma": gamma, "llc_draws": draws, "llc_chains": chains, "llc_init_loss": init_loss,
            "llc_tried": attempts, "llc_loss_trace": json.dumps([round(float(v), 6) for v in mean[::10]])}


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= AGREE * max(abs(a), abs(b), 1e-12)


def _levels_off(trace: torch.Tensor, init_loss: float) -> bool:
    """Finite, and the last quarter's mean loss within DRIFT of the rise (third quarter's mean minus the
    initial loss) of the third quarter's, give or take three standard errors of minibatch noise."""
    if not torch.isfinite(trace).all():
        return False
    series = trace.mean(0)  # (draws,) the chains' mean loss per draw
    quarter = len(series) // 4
    third, last = series[2 * quarter:3 * quarter], series[3 * quarter:]
    noise = math.sqrt(float(third.var()) / len(third) + float(last.var()) / len(last))
    rise = abs(float(third.mean()) - init_loss)
    return abs(float(last.mean() - third.mean())) <= DRIFT * rise + 3 * noise

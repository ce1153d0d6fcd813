"""Interventions around the optimizer step (Grokfast, ⊥Grad, constrained norm), StableMax, softmax collapse
and slingshots: each checked on a small case whose answer the paper's formula gives."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from test_population import assert_rows_close, in_float64
from test_training import Rows, trainer_for, without_time

from groklab.config import load_config
from groklab.dynamics import detect_slingshots, summarize
from groklab.errors import ConfigError, RunDirError
from groklab.experiment import _trainer, resolve
from groklab.measures.stability import softmax_collapse, stability, zero_terms
from groklab.models import build_model
from groklab.store.run_dir import _flatten_state, _unflatten_state
from groklab.tasks.losses import log_stablemax, stablemax_cross_entropy, stablemax_s
from groklab.training import Population, batchable
from groklab.training.interventions import GrokfastEMA, GrokfastMA, NormConstraint, OrthoGrad

GRADS = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([-1.0, 4.0]), torch.tensor([2.0, 2.0])]


def feed(hook, grads):
    """The gradients after the hook, for a one-tensor 'model' receiving `grads` in turn."""
    p = torch.nn.Parameter(torch.zeros(2))
    out = []
    for g in grads:
        p.grad = g.clone()
        hook.after_backward([("w", p)])
        out.append(p.grad.clone())
    return out


def test_grokfast_ema_filters_as_the_released_gradfilter_ema():
    alpha, lamb = 0.9, 2.0
    got = feed(GrokfastEMA(alpha, lamb), GRADS)
    mu, want = None, []
    for g in GRADS:  # gradfilter_ema: grads initialised to the first gradient, then the EMA, then g + lamb mu
        mu = g.clone() if mu is None else mu
        mu = mu * alpha + g * (1 - alpha)
        want.append(g + lamb * mu)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert torch.allclose(got[0], GRADS[0] * 3)  # the first gradient: mu = g, so g + 2g
    normalized = feed(GrokfastEMA(alpha, lamb, normalize=True), GRADS)
    for a, b in zip(normalized, want):
        torch.testing.assert_close(a, b / (1 + lamb))


def test_grokfast_ma_waits_for_its_window_then_adds_the_mean():
    got = feed(GrokfastMA(window=3, lamb=5.0, warmup=True), GRADS)
    torch.testing.assert_close(got[0], GRADS[0])  # warmup: unfiltered until three gradients are in
    torch.testing.assert_close(got[1], GRADS[1])
    torch.testing.assert_close(got[2], GRADS[2] + 5.0 * (GRADS[0] + GRADS[1] + GRADS[2]) / 3)
    torch.testing.assert_close(got[3], GRADS[3] + 5.0 * (GRADS[1] + GRADS[2] + GRADS[3]) / 3)  # the oldest left
    eager = feed(GrokfastMA(window=3, lamb=5.0, warmup=False), GRADS)
    torch.testing.assert_close(eager[1], GRADS[1] + 5.0 * (GRADS[0] + GRADS[1]) / 2)


def test_orthograd_removes_the_component_along_the_weights_and_keeps_the_norm():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 4, generator=gen))
    g = torch.randn(5, 4, generator=gen) + 3 * p.detach()  # mostly along w
    p.grad = g.clone()
    OrthoGrad().after_backward([("w", p)])
    assert abs(float((p.detach() * p.grad).sum())) < 1e-5 * float(p.detach().norm() * p.grad.norm())
    assert math.isclose(float(p.grad.norm()), float(g.norm()), rel_tol=1e-6)
    zero = torch.nn.Parameter(torch.zeros(3))  # w = 0: nothing to remove, the gradient passes
    zero.grad = torch.tensor([1.0, 2.0, 3.0])
    OrthoGrad().after_backward([("w", zero)])
    torch.testing.assert_close(zero.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_norm_constraint_holds_the_total_norm_through_training():
    prepared = tiny("train.max_steps=20", "train.weight_norm=3.0")
    trainer = trainer_for(prepared)
    trainer.run(Rows())
    assert math.isclose(float(NormConstraint.norm(trainer.named)), 3.0, rel_tol=1e-5)
    init = trainer_for(tiny("train.max_steps=5", "train.weight_norm=init"))
    start = float(NormConstraint.norm(init.named))
    init.run(Rows())
    assert math.isclose(float(NormConstraint.norm(init.named)), start, rel_tol=1e-5)


def test_stablemax_values_and_a_finite_gradient_everywhere():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5])
    torch.testing.assert_close(stablemax_s(x), torch.tensor([0.25, 0.5, 1.0, 2.0, 3.5]))
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    probs = log_stablemax(logits).exp()
    torch.testing.assert_close(probs, torch.tensor([[3.0, 1.0, 0.5]], dtype=torch.float64) / 4.5)
    loss = stablemax_cross_entropy(logits, torch.tensor([0]))
    assert loss.dtype == torch.float64 and math.isclose(loss.item(), -math.log(3 / 4.5))
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    ones = torch.ones(1, 3, requires_grad=True)  # x = 1: the negative branch 1/(1-x) would be infinite
    stablemax_cross_entropy(ones, torch.tensor([1])).backward()
    assert torch.isfinite(ones.grad).all()


def test_softmax_collapse_and_zero_terms_depend_on_the_float_type():
    logits = torch.tensor([[0.0, -20.0], [0.0, -1.0]])  # exp(-20) = 2e-9: absorbed by 1 in float32, not in float64
    labels = torch.tensor([0, 0])
    assert softmax_collapse(logits, torch.float32) == 0.5 and softmax_collapse(logits, torch.float64) == 0.0
    assert zero_terms(logits, labels, torch.float32) == 0.5 and zero_terms(logits, labels, torch.float64) == 0.0


def test_the_stability_measure_set_runs_on_a_model_and_refuses_a_hinge_task():
    prepared = tiny("measures.names=[stability]")
    model = build_model(prepared.model, 0)
    row = stability(model, prepared.task)
    assert set(row) == {"softmax_collapse", "zero_terms", "softmax_collapse_f64", "zero_terms_f64"}
    assert row["softmax_collapse"] == 0.0  # an initialised model is nowhere near collapse
    with pytest.raises(ConfigError, match="stability"):
        resolve(load_config("hu-sparse-parity", ["measures.names=[stability]"]))


@pytest.mark.parametrize(
    "extra",
    [
        ("train.grokfast={kind: ma, window: 4}", "train.orthograd=true", "train.weight_norm=init"),
        ("train.grokfast={kind: ema}", "train.optimizer=adam", "train.loss_fn=stablemax"),
    ],
)
def test_a_run_with_interventions_resumes_bit_for_bit_through_its_saved_state(extra):
    prepared = tiny("train.max_steps=40", "train.eval_every=5", "train.checkpoint_every=10", *extra)
    whole = Rows()
    trainer_for(prepared).run(whole)
    first = Rows()
    stop_after = iter(range(1000))
    trainer_for(prepared).run(first, should_stop=lambda: next(stop_after) >= 16)
    state = _unflatten_state(*_flatten_state(first.states[-1]))  # through the checkpoint file's layout
    assert state.step == 17 and state.hooks
    second = Rows()
    resumed = trainer_for(prepared)
    resumed.load_state(state)
    resumed.run(second)
    assert without_time(first.rows + second.rows) == without_time(whole.rows)
    plain = Rows()
    trainer_for(tiny("train.max_steps=40", "train.eval_every=5")).run(plain)
    assert without_time(plain.rows) != without_time(whole.rows)  # the interventions changed training


@pytest.mark.parametrize(
    "settings",
    [
        ["train.grokfast={kind: ema, alpha: 0.9}", "train.optimizer=adam"],  # the Grokfast presets' Adam
        ["train.grokfast={kind: ma, window: 4, lamb: 3.0}", "train.batch_size=32", "train.optimizer=adam"],
        ["train.orthograd=true", "train.weight_norm=init"],  # per member: its own projection, its own norm
    ],
    ids=["grokfast-ema-adam", "grokfast-ma-adam-own-wd", "orthograd-norm"],
)
def test_interventions_in_a_batch_act_on_each_member_as_alone(settings):
    """A population with interventions (stacked: per-member filters, projections and norms) and Adam
    (torch's on the stack; per member where their weight decays differ) computes, in float64, what each
    member computes alone; its members' checkpoints hold their state in the single run's layout."""
    own = (
        ["train.weight_decay=0.5", "train.weight_decay=0.1", "train.weight_decay=1.0"]
        if "kind: ma," in settings[0]
        else []
    )
    cfgs = [
        load_config(
            "nanda-mod-add",
            TINY[1::2] + settings + own[i : i + 1] + ["train.max_steps=30", "train.eval_every=5", "measures=null"],
            seed=s,
        )
        for i, s in enumerate((0, 1, 2))
    ]
    assert batchable(build_model(resolve(cfgs[0]).model, 0))
    solo, together, alone, batched = in_float64(cfgs)
    assert_rows_close(solo, together)
    assert [o.status for o in batched] == [o.status for o in alone]
    last = [sink.states[-1] for sink in together]
    assert set(last[1].hooks) == set(solo[1].states[-1].hooks) and last[1].hooks  # the single run's layout
    for key, value in solo[1].states[-1].hooks.items():
        torch.testing.assert_close(last[1].hooks[key], value, rtol=1e-9, atol=1e-12)
    if "train.weight_norm=init" in settings:  # each member held at its own initial norm
        targets = [float(state.hooks["weight_norm.target"]) for state in last]
        assert len(set(targets)) == 3


def test_members_with_interventions_leave_and_the_others_go_on():
    """A member that diverges (step 10) or stops early (step 40) leaves the stack with its filter state; the
    others' filters and projections go on as alone (float64)."""
    early = "train.early_stop={metric: train_loss, threshold: 2.5, patience: 2}"
    cfgs = [
        load_config(
            "nanda-mod-add",
            TINY[1::2]
            + ["train.grokfast={kind: ema, alpha: 0.9}", "train.orthograd=true", early, f"train.lr={lr}"]
            + ["train.max_steps=60", "train.eval_every=10", "measures=null"],
            seed=seed,
        )
        for seed, lr in ((0, 1e-3), (1, 1e30), (2, 1e-4))
    ]
    solo, together, alone, batched = in_float64(cfgs)
    assert [o.status for o in batched] == [o.status for o in alone]
    assert [o.step for o in batched] == [o.step for o in alone]
    assert [(o.status, o.step) for o in batched] == [("stopped_early", 40), ("diverged", 10), ("finished", 60)]
    assert_rows_close(solo, together)


def test_a_batch_with_interventions_resumes_bit_for_bit():
    """Interrupted at step 10 and resumed from its members' checkpoints (filter windows, norm targets), a
    population with interventions continues exactly as the uninterrupted one."""
    settings = ["train.grokfast={kind: ma, window: 4}", "train.weight_norm=init", "train.max_steps=20"]
    cfgs = [
        load_config("nanda-mod-add", TINY[1::2] + settings + ["train.eval_every=5", "measures=null"], seed=s)
        for s in (0, 1)
    ]
    whole = [Rows(), Rows()]
    Population([_trainer(resolve(c), None) for c in cfgs]).run(whole, seed=0)
    first, second = [Rows(), Rows()], [Rows(), Rows()]
    population = Population([_trainer(resolve(c), None) for c in cfgs])
    population.run(first, should_stop=lambda: population.step >= 10, seed=0)
    states = [sink.states[-1] for sink in first]
    assert states[0].step == 10 and "grokfast.window.blocks.0.mlp.W_in" in states[0].hooks
    Population([_trainer(resolve(c), state) for c, state in zip(cfgs, states)]).run(second, rng=states[0].rng)
    for a, b, c in zip(whole, first, second):
        assert without_time(b.rows + c.rows) == without_time(a.rows)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.grokfast={kind: kalman}", "grokfast.kind"),
        ("train.grokfast={alpha: 1.5}", "grokfast.alpha"),
        ("train.weight_norm=-1", "weight_norm"),
        ("train.loss_fn=sparsemax", "loss_fn"),
    ],
)
def test_bad_intervention_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ConfigError, match=message) as err:
        tiny(setting)
    assert "\n" not in str(err.value)


def test_stablemax_is_refused_for_a_hinge_task():
    with pytest.raises(ConfigError, match="hinge"):
        resolve(load_config("hu-sparse-parity", ["train.loss_fn=stablemax"]))


def staircase(steps, jumps, slope=1e-4):
    """A norm growing slowly (slope per step, relative) with sharp 30% jumps at `jumps`."""
    log = np.array([slope * s + sum(np.log(1.3) for j in jumps if s > j) for s in steps])
    return np.exp(log)


def test_slingshots_are_the_bursts_of_a_staircase_not_smooth_growth():
    steps = np.arange(0, 5000, 50)
    found = detect_slingshots(steps, staircase(steps, [1000, 2500, 4000]))
    assert [s["start"] for s in found] == [1000, 2500, 4000]
    assert all(math.isclose(s["rise"], 1.3 * math.exp(50e-4) - 1, rel_tol=1e-6) for s in found)
    assert detect_slingshots(steps, np.exp(5e-4 * steps)) == []  # steady exponential growth
    assert detect_slingshots(steps, staircase(steps, [4940])) == []  # the last interval: no plateau after it yet
    loss = np.where((steps > 2500) & (steps <= 2550), 2.0, 0.1)
    spikes = detect_slingshots(steps, staircase(steps, [2500]), loss)
    assert len(spikes) == 1 and math.isclose(spikes[0]["loss_spike"], 20.0)


def test_the_summary_counts_slingshots_on_the_last_layer():
    steps = np.arange(0, 5000, 50)
    norm = staircase(steps, [1000, 3000])
    spikes = np.where(np.isin(steps, [1050, 3050]), 1.0, 0.1)  # the training loss spikes with each jump
    metrics = pd.DataFrame(
        {
            "step": steps,
            "train_loss": spikes,
            "train_acc": 1.0,
            "test_loss": 1.0,
            "test_acc": 0.5,
            "sum_sq_layers.0.weight": 4.0,
            "sum_sq_layers.1.weight": norm**2,
        }
    )
    summary = summarize(metrics)
    assert summary["slingshots"] == 2 and summary["slingshot_steps"] == [1000, 3000]
    calm = summarize(metrics.assign(train_loss=0.1))  # the same jumps without a loss spike: not slingshots
    assert calm["slingshots"] == 0
    assert summary["slingshot_column"] == "sum_sq_layers.1.weight"


def tiny(*extra):
    return resolve(load_config("nanda-mod-add", TINY[1::2] + list(extra)))


def test_the_first_transient_from_initialization_is_not_a_slingshot():
    steps = np.arange(0, 5000, 50)
    norm = staircase(steps, [2500])
    norm[0] = norm[1] / 3  # the norm triples over the first interval, then grows slowly
    assert [s["start"] for s in detect_slingshots(steps, norm)] == [2500]
    norm[:2] = norm[2] / 1.3  # warmup: flat at first, then a jump at step 50 — still the transient
    assert [s["start"] for s in detect_slingshots(steps, norm)] == [2500]


def test_a_one_hot_mlp_run_on_modular_addition_reports_without_fourier_figures(tmp_path):
    """One-hot inputs (Prieto et al.'s MLP): no token embedding, so no Fourier measures or figures."""
    import groklab

    cfg = load_config("prieto-orthograd", ["train.max_steps=20", "train.eval_every=10", "measures.every=10"])
    run = groklab.run(cfg, tmp_path / "run")
    assert run.task.train.inputs.shape[1] == 2 * 113 and (tmp_path / "run" / "report.html").is_file()
    with pytest.raises(ConfigError, match="Fourier"):
        resolve(load_config("prieto-orthograd", ["measures.names=[fourier]"]))
    with pytest.raises(RunDirError, match="has no weight 'embed.W_E'"):  # not called corrupt: nothing to delete
        run.checkpoint(0, ["embed.W_E"])


@pytest.mark.slow
def test_orthograd_generalizes_without_weight_decay_where_the_softmax_baseline_does_not():
    """Prieto et al. 2025's claim on their MLP (prieto-orthograd vs prieto-softmax-collapse), 300 steps each
    (measured at seed 0: test accuracy 0.22 against 0.0001, and 0.69 at step 450)."""
    short = ["train.max_steps=300", "train.eval_every=300", "measures=null"]
    accs = {}
    for name in ("prieto-orthograd", "prieto-softmax-collapse"):
        prepared = resolve(load_config(name, short))
        rows = Rows()
        trainer_for(prepared).run(rows)
        accs[name] = rows.rows[-1]
    assert accs["prieto-orthograd"]["test_acc"] > 0.15 and accs["prieto-softmax-collapse"]["test_acc"] < 0.02
    assert accs["prieto-softmax-collapse"]["train_acc"] == 1.0  # memorized, did not generalize

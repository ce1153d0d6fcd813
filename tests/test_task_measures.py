"""Measures for every task: the local learning coefficient (measures/llc.py, through devinterp) -- a regular
model's known value, the same estimate twice, a second estimate with other chains, the measure set on a run --
and `structure` (measures/structure.py)."""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import cli_in_process, groklab_cli
from test_cli import bad
from test_sweep import PARITY

from groklab.measures.llc import estimate_llc
from groklab.store import Run

pytest.importorskip("devinterp", reason="the README's test command installs groklab[llc]")


def half_mse(model, x, y):
    return 0.5 * ((model(x) - y) ** 2).mean()


@pytest.fixture(scope="module")
def regression():
    """A linear regression with d = 10 parameters at its least-squares solution (unit-variance inputs and noise)."""
    torch.manual_seed(0)
    d, n = 10, 5000
    X = torch.randn(n, d)
    y = X @ torch.randn(d, 1) + torch.randn(n, 1)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
    return model, X, y


def test_a_regular_model_has_llc_d_over_2(regression):
    """λ = d / 2 for a regular model; with localization γ the local posterior's expectation is
    d/2 · nβ / (nβ + γ) (unit curvature). Both within 20%, with the step size calibrated automatically."""
    model, X, y = regression
    before = model.weight.detach().clone()
    for gamma in (1.0, 100.0):
        out = estimate_llc(model, X, y, half_mse, gamma=gamma)
        expected = 10 / 2 * out["llc_nbeta"] / (out["llc_nbeta"] + gamma)
        assert abs(out["llc"] - expected) <= 0.2 * expected, (gamma, out["llc"], expected, out["llc_epsilon"])
        assert out["llc_epsilon"] in (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
        trace = json.loads(out["llc_loss_trace"])
        assert len(trace) == 20 and all(math.isfinite(v) for v in trace)
    assert torch.equal(model.weight, before)  # the model is left as it was


def test_the_estimate_is_deterministic_and_leaves_the_random_state_alone(regression):
    model, X, y = regression
    torch.manual_seed(5)
    a = estimate_llc(model, X, y, half_mse, epsilons=(3e-3,), draws=40, burnin=20)
    after = torch.rand(3)
    torch.manual_seed(5)
    expected = torch.rand(3)
    b = estimate_llc(model, X, y, half_mse, epsilons=(3e-3,), draws=40, burnin=20)
    assert a == b and torch.equal(after, expected)
    c = estimate_llc(model, X, y, half_mse, epsilons=(3e-3,), draws=40, burnin=20, seed=1)
    assert c["llc"] != a["llc"]


def test_chains_that_leave_the_basin_give_no_estimate_or_are_tightened(regression):
    """The basin check: chains whose loss rises more than BASIN of the way from L_n(w*) to `ceiling` (the
    loss of knowing nothing) are not an estimate of the basin's LLC: NaN, with the rise recorded, or, with
    `escalate`, the next setting of the ladder (n/log n, 10x the localization), whose chains stay closer.
    The same chains against the regression's real ceiling (the zero output's loss, E y^2 / 2) rise by a
    tiny fraction and are kept."""
    from groklab.measures.llc import ladder

    model, X, y = regression
    kw = dict(epsilons=(3e-3,), draws=40, burnin=20)
    inside = estimate_llc(model, X, y, half_mse, ceiling=float(0.5 * (y**2).mean()), **kw)
    assert 0 < inside["llc_rise"] < 0.05 and inside["llc"] > 0 and inside["llc_tried"] == 1
    assert inside["llc_nbeta"] == pytest.approx(256 / math.log(256)) and inside["llc_gamma"] == 100
    init = inside["llc_init_loss"]
    ceiling = init + inside["llc_rise"] * (float(0.5 * (y**2).mean()) - init)  # the chains' mean loss: rise 1
    outside = estimate_llc(model, X, y, half_mse, ceiling=ceiling, escalate=False, **kw)
    assert math.isnan(outside["llc"]) and outside["llc_rise"] == pytest.approx(1.0)
    assert outside["llc_epsilon"] == 3e-3 and len(json.loads(outside["llc_loss_trace"])) == 4
    tightened = estimate_llc(model, X, y, half_mse, ceiling=ceiling, **{**kw, "epsilons": (3e-3, 3e-4)})
    assert tightened["llc_nbeta"] == pytest.approx(5000 / math.log(5000)) and tightened["llc_gamma"] == 1000
    assert tightened["llc_rise"] < 0.5 and tightened["llc"] > 0 and tightened["llc_epsilon"] == 3e-4, tightened
    assert ladder("batch", 100.0) == [("batch", 100.0), ("dataset", 1000.0), ("dataset", 10000.0)]
    assert ladder("dataset", 1000.0) == [("dataset", 1000.0), ("dataset", 10000.0), ("dataset", 100000.0)]


def test_llc_measured_on_a_run_and_a_second_estimate_agrees(tmp_path):
    """`groklab measure RUN --names llc` adds the llc columns at every checkpoint and keeps the run's other
    measures; a second estimate at the last checkpoint (devinterp, other chains) agrees within 30%."""
    out = tmp_path / "run"
    assert (
        groklab_cli(
            "run", "hu-sparse-parity", *PARITY, "--set", "train.checkpoint_every=240", "--out", str(out), "--no-report"
        ).returncode
        == 0
    )
    before = Run(out).metrics
    result = groklab_cli("measure", str(out), "--names", "llc")
    assert result.returncode == 0, result.stderr
    metrics = Run(out).metrics
    measured = metrics.dropna(subset=["llc"])
    assert list(measured["step"]) == [0, 240]
    assert (measured["llc_epsilon"] > 0).all() and measured["llc_loss_trace"].map(lambda t: len(json.loads(t))).eq(
        20
    ).all()
    # stayed in the basin: below half-way to the hinge's chance loss (1); at init the model is no better than
    # chance, so there is no basin to leave (NaN)
    assert measured["llc_init_loss"].iloc[0] >= 1 and math.isnan(measured["llc_rise"].iloc[0])
    assert 0 < measured["llc_rise"].iloc[1] <= 0.5
    pd.testing.assert_series_equal(metrics["l2"], before["l2"])  # weight_stats kept
    run = Run(out)
    task = run.task
    loss = lambda net, x, y: task.objective(task.outputs(net, x), y, torch.float32)  # noqa: E731
    second = estimate_llc(run.model(240), task.train.inputs, task.train.labels, loss, seed=1)
    first = measured["llc"].iloc[-1]
    assert first > 0 and abs(second["llc"] - first) <= 0.3 * abs(first), (first, second["llc"])
    # a cheaper pass on a subset: a fixed step size (no calibration), fewer chains, only steps at multiples of 200
    result = cli_in_process(
        "measure",
        str(out),
        "--names",
        "llc",
        "--every",
        "200",
        "--set",
        "measures.llc_epsilon=1e-3",
        "--set",
        "measures.llc_chains=2",
        "--set",
        "measures.llc_draws=40",
    )
    assert result.returncode == 0, result.stderr
    again = Run(out).metrics.dropna(subset=["llc"]).set_index("step")
    assert again.loc[0, "llc_epsilon"] == 1e-3 and again.loc[0, "llc_tried"] == 1 and again.loc[0, "llc_chains"] == 2
    assert again.loc[240, "llc"] == first  # not a multiple of 200: left as it was
    assert Run(out).config.measures.llc_epsilon == "each"  # the run's config is not changed
    bad(["measure", str(out), "--names", "llc", "--set", "train.lr=1"], "measure takes only measures.KEY=VALUE")
    bad(["measure", str(out), "--names", "llc", "--set", "measures.llc_epsilon=big"], "llc_epsilon")
    bad(["measure", str(out), "--names", "llc", "--every", "0"], "--every takes a positive number")


def test_structure_of_sparse_parity_is_the_weight_share_on_the_relevant_bits(tmp_path):
    from groklab.measures.structure import relevant_share

    W = torch.zeros(8, 12)
    W[:, :3] = torch.randn(8, 3)
    assert relevant_share(W, 3) == pytest.approx(1.0)
    assert relevant_share(torch.ones(8, 12), 3) == pytest.approx(3 / 12)
    out = tmp_path / "run"  # live, on a run that learns: the share moves from about k / n_bits towards 1
    result = groklab_cli(
        "run",
        "hu-sparse-parity",
        *PARITY,
        "--set",
        "train.max_steps=1200",
        "--set",
        "measures.names=[structure,weight_stats]",
        "--out",
        str(out),
        "--no-report",
    )
    assert result.returncode == 0, result.stderr
    metrics = Run(out).metrics
    assert metrics["structure"].iloc[0] == pytest.approx(3 / 12, abs=0.15)
    assert metrics["structure"].iloc[-1] > 2 * metrics["structure"].iloc[0] and metrics["train_acc"].iloc[-1] > 0.95


def test_structure_where_a_task_has_none():
    result = groklab_cli("run", "power-mod-div", "--set", "measures.names=[structure]", "--out", "/tmp/never")
    assert result.returncode == 2 and "'structure' is defined for" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

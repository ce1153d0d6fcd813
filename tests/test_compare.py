"""`groklab compare`: populations of planted runs (a modular-arithmetic-like population whose structure
measure and LLC lead generalization and whose weights shrink after it; a structural-LM-like one without the
LLC and without cleanup) through the same lenses — per-run stages, bootstrap intervals, the verdict claim
by claim — and the page in a real browser."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import cli_in_process, groklab_cli
from test_cli import bad
from test_report import drawn, open_in_browser

from groklab.config import load_preset
from groklab.dynamics import FEATURE_SETS, summarize
from groklab.dynamics.compare import (
    PeakOf,
    bootstrap_mean,
    bootstrap_peak,
    describe_peak,
    population_stats,
    rank_correlation,
    run_table,
    verdicts,
)
from groklab.store import RunDir, SweepDir
from groklab.sweep import grid_peaks, grid_summary, structure_correlation, sweep_table
from groklab.sweep.compare import compare_sweeps
from groklab.sweep.maps import map_sweep


def sigmoid(steps, at, width=50.0):
    return 1 / (1 + np.exp(-np.clip((steps - at) / width, -50, 50)))


def modular_run(seed: int, rng) -> pd.DataFrame:
    """Memorizes by 1000, generalizes at ~3000 (seed-dependent), structure and LLC move first, the weight
    norm falls after generalization; the 14 weight statistics drift with it (for the training map)."""
    steps = np.arange(0, 6000, 100)
    gen = 2500 + 150 * seed
    table = {
        "step": steps,
        "train_acc": np.minimum(1.0, steps / 1000),
        "train_loss": 1.0,
        "test_loss": 1.0,
        "test_acc": 0.03 + 0.97 * sigmoid(steps, gen),
        "structure": 0.9 * sigmoid(steps, gen - 900, 100),
        "llc": 300 + 500 * sigmoid(steps, 500) - 600 * sigmoid(steps, gen - 600, 100),
        "sum_sq_weights": 2000 + 500 * sigmoid(steps, 800) - 1500 * sigmoid(steps, gen + 500, 150),
    }
    for i, name in enumerate(FEATURE_SETS["base"]):
        table[name] = (i + 1) * sigmoid(steps, gen, 300) + 0.05 * rng.standard_normal(len(steps))
        table[name][1::2] = np.nan  # logged at every other evaluation only (e.g. at checkpoints): maps use those rows
    return pd.DataFrame(table)


def structural_run(seed: int, rng) -> pd.DataFrame:
    """A structural LM: in-distribution first-word accuracy saturates by 1500, generalization rises at
    ~8000 (seed 3 never), the t-score first; the weight norm only grows; no LLC measured."""
    steps = np.arange(0, 15000, 500)
    gen = 7000 + 500 * seed if seed != 3 else 10**6
    return pd.DataFrame(
        {
            "step": steps,
            "train_acc": 0.9,
            "test_acc": 0.9,
            "id_first_word_acc": np.minimum(1.0, steps / 1500),
            "gen_first_word_acc": 0.05 + 0.9 * sigmoid(steps, gen, 400),
            "t_score": 0.4 + 0.4 * sigmoid(steps, gen - 2500, 400),
            "weight_norm": 30 + steps / 1000,
        }
    )


def plant_sweep(path, preset: str, make, seeds=range(6)):
    config = load_preset(preset).model_dump(mode="json")
    sweep = SweepDir.create_or_open(path, config, list(seeds))
    rng = np.random.default_rng(0)
    for seed in seeds:
        run = RunDir.create(sweep.run_path(seed), yaml.safe_dump({**config, "seed": seed}))
        run.write_metrics(make(seed, rng).to_dict("records"))
        run.write_summary({"status": "finished"})
    return sweep


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    modular = plant_sweep(root / "modular", "quick", modular_run)
    structural = plant_sweep(root / "structural", "structural-qf-lab", structural_run)
    return modular, structural


def test_run_table_reads_every_stage_in_normalized_time(sweeps):
    modular, _ = sweeps
    row = run_table({0: modular_run(0, np.random.default_rng(0))}).iloc[0]
    assert row["generalizes"] and row["three_stages"]
    assert row["memorized_step"] == 1000 and row["generalized_step"] == 2600  # first evaluation past halfway
    assert row["memorization"] == pytest.approx(1000 / 2600) and row["delay"] == pytest.approx(1600 / 2600)
    assert 0 < row["llc_lead"] < row["structure_lead"] < 1  # structure moves first, then the LLC
    assert 0.5 < row["norm_fall"] < 0.65 and row["cleanup"] > 0


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).normal(3.0, 1.0, 40)
    mean, low, high = bootstrap_mean(values)
    assert low < mean < high and low < 3.0 < high
    assert bootstrap_mean(values) == (mean, low, high)  # same seed, same interval
    assert (
        high - low > bootstrap_mean(np.tile(values, 4))[2] - bootstrap_mean(np.tile(values, 4))[1]
    )  # more runs: narrower
    assert all(np.isnan(v) for v in bootstrap_mean([]))


def test_bootstrap_peak_says_where_a_grid_peaks_and_how_sure():
    """Murty et al.'s inverted U is a claim about where the mean peaks: resampling each point's seeds says how
    often each point is highest and how often the peak is inside the grid rather than at an end."""
    rng = np.random.default_rng(0)
    u = {2: rng.normal(0.2, 0.1, 10), 6: rng.normal(0.9, 0.1, 10), 10: rng.normal(0.5, 0.1, 10)}
    shares, interior = bootstrap_peak(u)
    assert shares[6] == interior == 1.0 and shares[2] == shares[10] == 0
    assert bootstrap_peak(u) == (shares, interior)  # seeded
    rising = {2: rng.normal(0.2, 0.2, 5), 6: rng.normal(0.5, 0.2, 5), 10: rng.normal(0.8, 0.2, 5)}
    shares, interior = bootstrap_peak(rising)
    assert shares[10] > 0.8 and interior == pytest.approx(1 - shares[10]) and sum(shares.values()) == pytest.approx(1)
    close = {4: [0.5, 0.9, 0.1], 6: [0.6, 0.2, 0.8], 8: [0.4, 0.7, 0.6]}  # three noisy seeds each: unsure
    assert max(bootstrap_peak(close)[0].values()) < 0.6
    shares, interior = bootstrap_peak({2: [0.1, 0.2], 6: [], 8: [float("nan"), 0.9]})  # points without values left out
    assert set(shares) == {2, 8} and shares[8] == 1.0 and np.isnan(interior)  # two points: no interior
    assert describe_peak({6: 0.62, 8: 0.3, 4: 0.08, 2: 0.0}, 0.92) == (
        "6 in 62%, 8 in 30%, 4 in 8% of 2000 resamples of the seeds; inside the grid in 92%"
    )
    assert bootstrap_peak({}) == ({}, pytest.approx(float("nan"), nan_ok=True))
    # no seed crossing anywhere: no peak (not the first point's), and said so
    nothing = {2: [False, False], 6: [False, False, False], 10: [False]}
    assert bootstrap_peak(nothing) == ({2: 0.0, 6: 0.0, 10: 0.0}, 0.0)
    assert (
        describe_peak(*bootstrap_peak(nothing)) == "flat in 100% of 2000 resamples of the seeds; inside the grid in 0%"
    )
    shares, interior = bootstrap_peak({2: [0, 0], 6: [0, 1], 10: [0]})  # flat when 6 resamples two zeros (1 in 4)
    assert shares[6] == interior == pytest.approx(0.75, abs=0.03) and shares[2] == 0
    assert describe_peak(shares, interior).startswith(f"6 in {shares[6]:.0%}, flat in {1 - shares[6]:.0%} of 2000")
    # what a peak is of, as `groklab show` names it
    assert (
        f"{PeakOf('t_score')}" == "t_score"
        and f"{PeakOf('gen_first_word_acc', 0.8)}" == "gen_first_word_acc crossing 0.8"
    )


def test_rank_correlation_pooled_and_within_groups():
    """A trend the groups share (deeper: higher t-score and better generalization) is not a within-group one."""
    x, y = [1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.5, 0.9]
    rho, p, n = rank_correlation(x, y)
    assert rho == pytest.approx(0.9) and 0 < p < 0.1 and n == 5
    # two groups: within each, higher x goes with lower y; between them, the second is higher on both
    x, y, g = [1, 2, 3, 11, 12, 13], [3, 2, 1, 13, 12, 11], ["a"] * 3 + ["b"] * 3
    assert rank_correlation(x, y)[0] > 0.4 and rank_correlation(x, y, g)[0] == pytest.approx(-1)
    assert rank_correlation([1, 2, float("nan"), 4], [1, 2, 3, 4]) == (pytest.approx(1), 0.0, 3)
    assert np.isnan(rank_correlation([1, 2], [1, 2])[0]) and np.isnan(rank_correlation([1, 1, 1], [1, 2, 3])[0])
    assert rank_correlation([], [], [])[2] == 0  # no run learnt the in-distribution set: nothing to say


def test_runs_without_held_out_metrics_answer_nothing():
    """An imported LM series (weight statistics only) cannot say whether it generalizes: n/a, not "no"."""
    weights_only = pd.DataFrame({"step": [0, 100, 200], "l2": [1.0, 2.0, 3.0]})
    table = run_table({seed: weights_only for seed in range(4)})
    assert table["generalizes"].isna().all() and table["three_stages"].isna().all()
    stats = population_stats(table)
    assert (stats["n"] == 0).all()
    row = verdicts({"lm": stats, "other": stats}, {"lm": None, "other": None})
    assert row.loc[0, "lm"] == "n/a: no run has it" and row.loc[0, "verdict"] == "not enough runs"


def test_verdicts_claim_by_claim(sweeps):
    modular, structural = sweeps
    rng = np.random.default_rng(0)
    stats = {
        "modular": population_stats(run_table({s: modular_run(s, rng) for s in range(6)})),
        "structural": population_stats(run_table({s: structural_run(s, rng) for s in range(6)})),
    }
    s = stats["structural"].set_index("quantity")
    assert s.loc["generalizes", "mean"] == pytest.approx(5 / 6) and s.loc["generalizes", "n"] == 6
    detours = {
        "modular": pd.DataFrame(
            {
                "state": [0, 1, 2],
                "r": [np.nan, 0.6, -0.6],
                "p_holm": [np.nan, 0.01, 0.01],
                "obligatory": [True, False, False],
                "detour": [False, True, False],
            }
        ),
        "structural": None,
    }
    table = verdicts(stats, detours).set_index("claim")
    verdict = table["verdict"].to_dict()
    by_quantity = lambda word: next(v for k, v in verdict.items() if word in k)  # noqa: E731
    assert by_quantity("structure measure") == "same"  # both lead
    assert by_quantity("cleanup shrinks") == "different"  # the LM's norm never falls
    assert by_quantity("three stages") == "different"
    assert by_quantity("LLC moves") == "not enough runs"  # the structural population has no LLC
    assert by_quantity("detour") == "not enough runs"  # no map for one of them
    assert table.loc[next(k for k in verdict if "detour" in k), "modular"].startswith("yes: state 1 (r = +0.60")
    assert table.loc[next(k for k in verdict if "LLC" in k), "structural"] == "n/a: no run has it"


def test_compare_page_in_the_browser(sweeps, tmp_path):
    modular, structural = sweeps
    map_sweep(modular, n_states=2, n_restarts=1, png=False)  # a stored map; the structural one gets none (--no-maps)
    out = tmp_path / "cmp" / "compare.html"
    result = groklab_cli(
        "compare",
        str(modular.path),
        str(structural.path),
        "-o",
        str(out),
        "--no-maps",
        "--labels",
        "modular,structural",
    )
    assert result.returncode == 0, result.stderr
    assert "different" in result.stdout and f"compare: {out}" in result.stdout
    runs = pd.read_csv(tmp_path / "cmp" / "compare_runs.csv")
    assert sorted(runs["population"].unique()) == ["modular", "structural"] and len(runs) == 12
    assert set(pd.read_csv(tmp_path / "cmp" / "compare_verdicts.csv")["verdict"]) <= {
        "same",
        "different",
        "not enough runs",
    }
    errors, shots, text = open_in_browser(out)
    assert errors == []
    assert {"normalized_curves", "stage_statistics", "training_map_0"} <= set(shots)
    assert all(drawn(shots[key]) for key in ("normalized_curves", "stage_statistics", "training_map_0"))
    for words in (
        "Verdict, claim by claim",
        "held_out = gen_first_word_acc",
        "no training map (not fitted: --no-maps)",
        "the sweep's stored map",
        "modular (median)",
    ):
        assert words in text
    assert not (structural.path / "map").exists()  # --no-maps: nothing written into the sweep


def test_compare_fits_a_missing_map_into_the_sweep(sweeps, tmp_path):
    _, structural = sweeps
    modular = plant_sweep(tmp_path / "modular", "quick", modular_run)
    result = compare_sweeps([modular.path, structural.path], tmp_path / "c.html", n_boot=200)
    fitted, lacking = result.populations
    assert fitted.map_note == "fitted now and stored in the sweep" and (modular.path / "map" / "detours.csv").is_file()
    assert lacking.map_note.startswith("no training map: the runs' metrics have no column(s)")  # no weight statistics
    assert not (structural.path / "map").exists()


def test_compare_errors(sweeps, tmp_path):
    modular, structural = sweeps
    bad(["compare", str(modular.path)], "at least two sweeps")
    bad(["compare", str(modular.path), str(tmp_path / "nowhere")], "no sweep directory")
    bad(["compare", str(modular.path), str(structural.path), "--labels", "a"], "1 label(s) for 2 sweeps")
    bad(["compare", str(modular.path), str(modular.path)], "share the label")
    bad(["compare", str(modular.path), f"{structural.path}@model.n_layers=4"], "no such point")
    empty = SweepDir.create_or_open(tmp_path / "empty", load_preset("quick").model_dump(mode="json"), [0])
    bad(["compare", str(modular.path), str(empty.path)], "no finished run to compare")
    bad(["compare", str(modular.path), str(structural.path), "--min-runs", "1"], "--min-runs must be at least 2")


def test_report_of_a_depth_sweep(sweeps, tmp_path):
    """`groklab report SWEEP_DIR` of a grid sweep: each held-out metric against depth, seeds and mean with a
    95% bootstrap interval (Murty et al.'s inverted U), and the per-point numbers behind it."""
    config = load_preset("structural-qf-lab").model_dump(mode="json")
    grid = {"model.n_layers": [2, 6, 10]}
    sweep = SweepDir.create_or_open(tmp_path / "depths", config, list(range(4)), grid=grid)
    for depth in grid["model.n_layers"]:
        for seed in range(4):
            # depths 2 and 10 never generalize (seed 3's run stands in: it never rises); 6 does, but seed 3
            metrics = structural_run(3 if depth != 6 else seed, None)
            point = {"model.n_layers": depth}
            run = RunDir.create(sweep.run_path(seed, point), yaml.safe_dump({**config, "seed": seed}))
            run.write_metrics(metrics.to_dict("records"))
            run.write_summary({"status": "finished", **summarize(metrics)})
    result = cli_in_process("report", str(sweep.path), "--png", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    page = (sweep.path / "report.html").read_text()
    assert "gen_first_word_acc across the grid" in page and "95%" in page
    assert (tmp_path / "png" / "grid_gen_first_word_acc.png").is_file()
    summary = grid_summary(sweep_table(sweep), ["model.n_layers"]).set_index("model.n_layers")  # what the page shows
    assert f"{summary.loc[6, 'gen_first_word_acc_final_ci_low']:.4g}" in page.split("<h2>Per grid point</h2>")[1]
    assert (
        summary.loc[2, "gen_first_word_acc_crossed_0.8"] == 0
        and summary.loc[6, "gen_first_word_acc_crossed_0.8"] == 0.75
    )
    deep = summary.loc[6]
    assert (
        deep["gen_first_word_acc_final_ci_low"]
        < deep["gen_first_word_acc_final_mean"]
        <= deep["gen_first_word_acc_final_ci_high"]
    )
    assert deep["gen_first_word_acc_final_ci_low"] > summary.loc[2, "gen_first_word_acc_final_ci_high"]
    # the inverted U, and how sure: depth 6 peaks unless a resample draws seed 3 four times (1 in 256: flat)
    shares, interior = grid_peaks(sweep_table(sweep), "model.n_layers")[PeakOf("gen_first_word_acc")]
    assert shares[6] == interior and 0.98 < interior < 1 and shares[2] == shares[10] == 0
    assert f"Where the final mean peaks over model.n_layers: {describe_peak(shares, interior)}." in page
    # the paper's own measure, the share of seeds crossing 0.8: 3 of 4 at depth 6, none at 2 or 10
    crossing = grid_peaks(sweep_table(sweep), "model.n_layers")[PeakOf("gen_first_word_acc", 0.8)]
    assert crossing[0][6] == crossing[1] and 0.98 < crossing[1] < 1 and crossing[0][10] == 0
    assert f"Where the share crossing 0.8 peaks: {describe_peak(*crossing)}." in page
    shown = cli_in_process("show", str(sweep.path)).stdout.split("where the mean over seeds peaks")[1]
    assert f"  gen_first_word_acc: {describe_peak(shares, interior)}" in shown
    assert f"  gen_first_word_acc crossing 0.8: {describe_peak(*crossing)}" in shown
    assert (
        grid_peaks(sweep_table(sweep), "model.n_layers")[PeakOf("t_score")][0][6] > 0.98
    )  # Murty et al.: highest at the best depth
    # run by run: the t-score goes with generalization (every run here learns the in-distribution set)
    found = structure_correlation(sweep_table(sweep), ["model.n_layers"])
    (rho, p, n), within = found["all"], found["within"]
    assert found["metric"] == "gen_first_word_acc" and n == 12 and rho > 0.9 and p < 0.01 and within[0] > 0.9
    assert f"over the 12 runs that learnt the in-distribution set: Spearman {rho:.2f} (p {p:.2g})" in shown
    assert f"Spearman over the 12 others: {rho:.2f} (p {p:.2g})" in page  # and drawn, run by run
    assert (tmp_path / "png" / "grid_structure.png").is_file()
    bad(["report", str(sweep.path), "-o", str(tmp_path / "x.html")], "leave out -o")
    seeds_only = cli_in_process("report", str(sweeps[0].path))  # no grid: every run's curves
    assert seeds_only.returncode == 0, seeds_only.stderr
    assert "test_acc of every run" in (sweeps[0].path / "report.html").read_text()
    empty = SweepDir.create_or_open(tmp_path / "empty", config, [0])
    bad(["report", str(empty.path)], "has no run with metrics yet")


def test_report_of_a_train_fraction_sweep(tmp_path):
    """A modular grid (Nanda et al.'s train-fraction curve): the convergence step against the grid, seeds and
    the mean of those that converge with its interval, the share converging; `groklab show` prints the same."""
    config = load_preset("quick").model_dump(mode="json")
    grid = {"task.frac_train": [0.3, 0.5]}
    sweep = SweepDir.create_or_open(tmp_path / "fractions", config, list(range(4)), grid=grid)
    for frac in grid["task.frac_train"]:
        for seed in range(4):
            metrics = modular_run(seed, np.random.default_rng(seed))  # test acc crosses 0.9 at 2500 + 150 seed + ~100
            if frac == 0.3:  # the smaller fraction groks later, and seed 3 not at all within its steps
                metrics["test_acc"] = 0.03 if seed == 3 else 0.03 + 0.97 * sigmoid(metrics["step"], 4500 + 150 * seed)
            run = RunDir.create(
                sweep.run_path(seed, {"task.frac_train": frac}), yaml.safe_dump({**config, "seed": seed})
            )
            run.write_metrics(metrics.to_dict("records"))
            run.write_summary({"status": "finished"})
    summary = grid_summary(sweep_table(sweep), ["task.frac_train"]).set_index("task.frac_train")
    assert summary.loc[0.3, "converged_share"] == 0.75 and summary.loc[0.5, "converged_share"] == 1.0
    late, early = summary.loc[0.3], summary.loc[0.5]
    assert early["convergence_step_ci_low"] <= early["convergence_step_mean"] <= early["convergence_step_ci_high"]
    assert late["convergence_step_ci_low"] > early["convergence_step_ci_high"]  # seed 3's censored run not averaged
    assert late["convergence_step_median"] == 4800  # seeds 0-2: 4700, 4800, 5000 (crossing 0.9 ~108 steps in)
    # over all four, seed 3 counted as later: the mean of the 2nd and 3rd, both converged, so known
    assert (late["convergence_step_median_all"], late["convergence_step_median_known"]) == (4900, True)
    result = cli_in_process("report", str(sweep.path), "--png", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    page = (sweep.path / "report.html").read_text()
    assert "convergence across the grid" in page and "never converged (last step)" in page
    assert "test_acc of every run" in page and "task.frac_train=0.3" in page  # the curves, a colour per point
    assert "fraction falls below" in page and (tmp_path / "png" / "grid_convergence.png").is_file()
    shown = cli_in_process("show", str(sweep.path)).stdout
    assert "0.75 [" in shown and f"{early['convergence_step_mean']:.0f} [" in shown and "step median" in shown
    assert "median, all runs" in shown and " 4900" in shown

"""Seed sweeps (`groklab sweep`) and training maps of sweeps (`groklab map`), end to end on tiny runs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_in_process, groklab_cli
from test_cli import bad, snapshot

from groklab.config import load_preset
from groklab.errors import ConfigError
from groklab.store import Run, SweepDir
from groklab.sweep import parse_seeds, sweep

# A sparse-parity MLP small enough to train in about a second per seed.
PARITY = [
    "--set",
    "task.n_bits=12",
    "--set",
    "task.n_train=200",
    "--set",
    "task.n_test=50",
    "--set",
    "model.hidden=[64]",
    "--set",
    "train.max_steps=240",
    "--set",
    "train.eval_every=8",
    "--set",
    "measures.every=8",
    "--set",
    "train.checkpoint_every=40",
]


def parity_config(**train):
    config = load_preset("hu-sparse-parity")
    task = config.task.model_copy(update={"n_bits": 12, "n_train": 200, "n_test": 50})
    model = config.model.model_copy(update={"hidden": [64]})
    train = config.train.model_copy(update={"max_steps": 240, "eval_every": 8, "checkpoint_every": 40, **train})
    measures = config.measures.model_copy(update={"every": 8})
    return config.model_copy(update={"task": task, "model": model, "train": train, "measures": measures})


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0-1,1") == [0, 1, 5]
    for text in ("3-1", "a", "1-", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(text)


@pytest.fixture(scope="module")
def parity_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "parity"
    result = groklab_cli("sweep", "hu-sparse-parity", *PARITY, "--seeds", "0-5", "--workers", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def test_sweep_runs_every_seed_and_tabulates(parity_sweep):
    out, result = parity_sweep
    table = pd.read_csv(out / "table.csv")
    assert table["seed"].tolist() == list(range(6))
    assert (table["status"] == "finished").all()
    assert table["final_train_acc"].min() > 0.7  # learning (chance is 0.5)
    for seed in range(6):
        run = Run(out / "runs" / f"seed_{seed:04d}")
        assert run.config.seed == seed and run.metrics["step"].iloc[-1] == 240
        assert {"l1", "spectral", "code_sparsity", "var_b"} <= set(run.metrics.columns)
    # the seeds differ (data, init, batch order), and convergence is reported per seed
    finals = [Run(out / "runs" / f"seed_{s:04d}").metrics["l2"].iloc[-1] for s in range(6)]
    assert len(set(finals)) == 6
    assert set(table["converged"]) <= {True, False}
    censored = table[~table["converged"]]
    assert censored["censored"].all() and (censored["convergence_step"] == 240).all()
    assert "seed" in result.stdout and "converged (test acc >= 0.9)" in result.stdout
    show = groklab_cli("show", str(out))
    assert show.returncode == 0 and show.stdout.count("finished") == 6
    assert show.stdout.count("> 240") == len(censored)  # not converged by its last step, not "240"


def test_show_prints_a_run_not_converged_as_later_than_its_last_step():
    from groklab.cli import _not_yet

    table = pd.DataFrame({"converged": [True, False, None], "convergence_step": [100.0, 240.0, float("nan")]})
    assert _not_yet(table)["convergence_step"].tolist() == ["100", "> 240", "-"]


def test_sweep_rerun_skips_finished_runs(parity_sweep):
    out, _ = parity_sweep
    before = snapshot(out / "runs")
    result = groklab_cli("sweep", "hu-sparse-parity", *PARITY, "--seeds", "0-5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "6 of 6 runs already done; 0 to run" in result.stderr
    assert snapshot(out / "runs") == before


def test_sweep_same_seed_same_numbers(parity_sweep, tmp_path):
    out, _ = parity_sweep
    config = parity_config()
    again = sweep(config, [3], tmp_path / "again", threads=1)  # as each of the fixture's 2 workers
    mine = Run(again.run_path(3)).metrics.drop(columns="elapsed_s")
    theirs = Run(out / "runs" / "seed_0003").metrics.drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(mine, theirs)


@pytest.fixture(scope="module")
def straight_parity_run(tmp_path_factory):
    config = parity_config(max_steps=400, checkpoint_every=40)
    straight = sweep(config, [0], tmp_path_factory.mktemp("sweeps") / "straight", threads=1)
    return config, Run(straight.run_path(0)).metrics.drop(columns="elapsed_s")


@pytest.mark.parametrize(
    "event, n",
    [
        ("checkpoint", 1),  # the step-0 checkpoint only (issue 11's window)
        ("metrics", 7),  # between checkpoints: rows past the resume state
        ("metrics", 11),  # step 80's row written, its checkpoint not
        ("state", 4),
    ],
)  # step 120's weights written, its resume state not
def test_sweep_resumes_a_killed_worker(tmp_path, straight_parity_run, event, n):
    """A worker killed (SIGKILL, tests/kill_at.py) at a moment of its run leaves a run the next `groklab sweep`
    resumes from its last checkpoint; the resumed run's metrics equal an uninterrupted run's, every column."""
    config, straight = straight_parity_run
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config.model_dump(mode="json"), [0])
    env = {**os.environ, "GROKLAB_THREADS": "1"}
    worker = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("kill_at.py")),
            event,
            str(n),
            "worker",
            str(sweep_dir.path),
            "[[{}, 0]]",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    killed = Run(sweep_dir.run_path(0))
    assert killed.status in ("killed", "new"), killed.status  # "new": killed before its first summary
    assert 0 <= killed.metrics["step"].iloc[-1] < 400

    resumed = sweep(config, [0], sweep_dir.path, threads=1)
    run = Run(resumed.run_path(0))
    assert run.status == "finished" and run.metrics["step"].iloc[-1] == 400
    assert run.metrics["step"].is_unique and run.metrics["step"].is_monotonic_increasing
    pd.testing.assert_frame_equal(run.metrics.drop(columns="elapsed_s"), straight)


def test_a_failed_seed_is_recorded_and_the_others_finish(tmp_path):
    config = parity_config(max_steps=16)
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config.model_dump(mode="json"), [0, 1, 2])
    broken = sweep_dir.run_path(1)
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("this: [is not a run config")
    result = sweep(config, [0, 1, 2], sweep_dir.path, workers=2)
    table = pd.read_csv(result.path / "table.csv").set_index("seed")
    assert table.loc[0, "status"] == table.loc[2, "status"] == "finished"
    assert table.loc[1, "status"] != "finished"
    assert "exit code 2" in table.loc[1, "error"] and "seed_0001.log" in table.loc[1, "error"]
    assert "error" in (result.path / "logs" / "seed_0001.log").read_text()
    # `groklab show` keeps the recorded error
    show = groklab_cli("show", str(result.path))
    assert show.returncode == 0 and "seed" in show.stdout
    assert "exit code 2" in pd.read_csv(result.path / "table.csv").set_index("seed").loc[1, "error"]


def test_workers_default_to_a_one_thread_process_per_core_on_a_cpu(monkeypatch, tmp_path):
    """One run per core trains more runs an hour than one run on every core (docs/results/speed.md), so a
    sweep left to choose takes a process per core, never more than its units; a GPU gets one process."""
    from groklab import runtime
    from groklab.sweep import local_slots

    monkeypatch.setattr(runtime, "cpu_threads", lambda: 8)
    assert local_slots(None, None, 20, "cpu") == (8, 1)
    assert local_slots(None, None, 3, "cpu") == (3, 2)  # the cores shared out over the units there are
    assert local_slots(None, None, 1, "cpu") == (1, 8)
    assert local_slots(None, 2, 20, "cpu") == (4, 2)
    assert local_slots(3, None, 20, "cpu") == (3, 2)
    assert local_slots(None, None, 20, "cuda") == (1, 8)
    monkeypatch.undo()

    lines = []
    out = sweep(parity_config(max_steps=16), [0, 1, 2], tmp_path / "s", progress=lines.append)
    cpus = runtime.cpu_threads()
    workers = min(3, cpus)
    assert f"{workers} process(es) at a time ({cpus // workers} thread(s) each)" in lines[0]
    assert {Run(path).summary["threads"] for path in sorted((out.path / "runs").iterdir())} == {cpus // workers}


def test_sweep_errors(parity_sweep, tmp_path):
    out, _ = parity_sweep
    bad(["sweep", "hu-sparse-parity", "--seeds", "9-1"], "--seeds takes ranges")
    bad(
        ["sweep", "hu-sparse-parity", *PARITY, "--seeds", "0", "--workers", "0", "--out", str(tmp_path / "w")],
        "--workers must be at least 1",
    )
    bad(
        ["sweep", "hu-sparse-parity", *PARITY, "--set", "train.lr=0.2", "--seeds", "0-5", "--out", str(out)],
        "holds a sweep of another config",
        run_dir=out,
    )
    bad(["sweep", "hu-sparse-parity", "--set", "task.k=50", "--seeds", "0", "--out", str(tmp_path / "k")], "task")
    (tmp_path / "file").write_text("x")
    bad(["sweep", "hu-sparse-parity", *PARITY, "--seeds", "0", "--out", str(tmp_path / "file")], "not a groklab sweep")
    bad(["sweep", "hu-mnist-mlp", "--seeds", "0", "--out", str(tmp_path / "m")], "task.path")
    assert not (tmp_path / "w").exists() and not (tmp_path / "k").exists() and not (tmp_path / "m").exists()


def test_map_of_a_sweep(parity_sweep):
    out, _ = parity_sweep
    result = groklab_cli("map", str(out), "--states", "2", "--restarts", "2", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    assert "states: K = 2" in result.stdout and "detours:" in result.stdout
    map_dir = out / "map"
    for name in (
        "training_map.png",
        "training_map.svg",
        "report.html",
        "training_map.json",
        "selection.csv",
        "states.csv",
        "detours.csv",
        "transitions.csv",
        "transition_features.csv",
        "paths.csv",
        "convergence.csv",
        "figures/state_paths.png",
        "figures/state_occupancy.png",
    ):
        assert (map_dir / name).is_file(), name
    paths = pd.read_csv(map_dir / "paths.csv")
    assert sorted(paths["seed"].unique()) == list(range(6)) and set(paths["state"]) <= {0, 1}
    assert len(paths) == 6 * 31  # 31 evaluations per run (steps 0, 8, ..., 240)
    states = pd.read_csv(map_dir / "states.csv")
    assert states["occupancy"].sum() == pytest.approx(1)
    assert (map_dir / "training_map.svg").read_text().lstrip().startswith("<?xml")
    page = (map_dir / "report.html").read_text()
    assert "Training map" in page and "Detour test" in page and "training_map" in page
    assert "When runs are in each state" in page

    from groklab.dynamics import TrainingMap

    model = TrainingMap.load(map_dir / "training_map.json")
    table = Run(out / "runs" / "seed_0002").metrics
    assert (model.predict(table) == paths[paths["seed"] == 2]["state"].to_numpy()).all()

    # another map kept beside it (--name): the sweep's own map untouched
    before = {p.name: p.read_bytes() for p in map_dir.glob("*.csv")}
    named = cli_in_process(
        "map", str(out), "--states", "3", "--restarts", "1", "--jobs", "1", "--name", "k3", "--covariance-floor", "0.01"
    )
    assert named.returncode == 0, named.stderr
    assert "map-k3" in named.stdout and pd.read_csv(out / "map-k3" / "states.csv")["state"].nunique() == 3
    floored = TrainingMap.load(out / "map-k3" / "training_map.json")  # the floor kept with the map, and said
    assert floored.covariance_floor == 0.01 and np.linalg.eigvalsh(floored.covars_).min() >= 0.01 - 1e-9
    assert "floor 0.01 on its diagonal" in (out / "map-k3" / "report.html").read_text()
    assert {p.name: p.read_bytes() for p in map_dir.glob("*.csv")} == before
    bad(["map", str(out), "--name", "../elsewhere"], "--name takes letters")

    # convergence read from another metric (a structural sweep's gen_* metric, here the train accuracy)
    again = groklab_cli(
        "map",
        str(out),
        "--states",
        "2",
        "--restarts",
        "1",
        "--jobs",
        "1",
        "--metric",
        "train_acc",
        "--threshold",
        "0.8",
    )
    assert again.returncode == 0, again.stderr
    assert (
        "train_acc &gt;= 0.8" in (map_dir / "report.html").read_text()
        or "train_acc >= 0.8" in (map_dir / "report.html").read_text()
    )

    # how robust: 2 refits on resampled runs, the released code's selection rule
    again = groklab_cli(
        "map",
        str(out),
        "--states",
        "2",
        "--restarts",
        "1",
        "--jobs",
        "1",
        "--robustness",
        "2",
        "--bootstrap",
        "--selection",
        "mean",
    )
    assert again.returncode == 0, again.stderr
    assert "robustness over 2 refits: K chosen 2: 2" in again.stdout
    fits = pd.read_csv(map_dir / "robustness_fits.csv")
    assert list(fits["fit"]) == [0, 1, 2] and list(fits["bootstrap"]) == [False, True, True]
    summary = pd.read_csv(map_dir / "robustness_summary.csv")
    assert list(summary["reference_state"]) == [0, 1] and summary["matched"].between(0, 1).all()
    assert (map_dir / "robustness_states.csv").is_file() and (map_dir / "figures" / "robustness.png").is_file()
    assert "How robust is the map?" in (map_dir / "report.html").read_text()


def test_map_errors(parity_sweep, tmp_path):
    out, _ = parity_sweep
    bad(["map", str(tmp_path)], "not a groklab sweep")
    bad(["map", str(tmp_path / "nowhere")], "no sweep directory")
    bad(["map", str(out), "--states", "many"], "--states takes")
    bad(["map", str(out), "--features", "l1,accuracy"], "no column(s) accuracy")
    bad(["map", str(out), "--features", "best"], "unknown feature set 'best'")
    bad(["map", str(out), "--metric", "gen_first_word_acc"], "no column 'gen_first_word_acc'")
    bad(["map", str(out), "--point", "train.lr=0.1"], "has no grid: drop --point")
    bad(["map", str(out), "--robustness", "-1"], "--robustness takes a number of refits")
    bad(["map", str(out), "--covariance-floor", "-0.1"], "--covariance-floor takes a number >= 0")
    bad(["map", str(out), "--bootstrap"], "--bootstrap needs one > 0")
    bad(["map", str(out), "--selection", "median"], "--selection")
    empty = SweepDir.create_or_open(tmp_path / "empty", parity_config().model_dump(mode="json"), [0, 1])
    bad(["map", str(empty.path)], "needs at least 3")


def test_grid_sweep(tmp_path):
    """--grid runs every point for every seed, each in its own directory with its own config."""
    out = tmp_path / "grid"
    result = groklab_cli(
        "sweep",
        "hu-sparse-parity",
        *PARITY,
        "--set",
        "train.max_steps=40",
        "--seeds",
        "0-2",
        "--grid",
        "train.lr=0.05,0.1",
        "--workers",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 6 and sorted(zip(table["train.lr"], table["seed"])) == [
        (lr, s) for lr in (0.05, 0.1) for s in range(3)
    ]
    assert (table["status"] == "finished").all()
    for lr in (0.05, 0.1):
        run = Run(out / "runs" / f"train.lr={lr}" / "seed_0001")
        assert run.config.train.lr == lr and run.config.seed == 1
    assert "per grid point" in result.stdout
    again = groklab_cli(
        "sweep",
        "hu-sparse-parity",
        *PARITY,
        "--set",
        "train.max_steps=40",
        "--seeds",
        "0-2",
        "--grid",
        "train.lr=0.05,0.1",
        "--out",
        str(out),
    )
    assert again.returncode == 0 and "6 of 6 runs already done" in again.stderr
    bad(
        [
            "sweep",
            "hu-sparse-parity",
            *PARITY,
            "--set",
            "train.max_steps=40",
            "--seeds",
            "0-1",
            "--grid",
            "train.lr=0.05,0.2",
            "--out",
            str(out),
        ],
        "another config or grid",
        run_dir=out,
    )
    bad(["sweep", "hu-sparse-parity", "--grid", "train.lr", "--seeds", "0"], "--grid takes")
    bad(
        ["sweep", "hu-sparse-parity", "--grid", "train.lrr=1,2", "--seeds", "0", "--out", str(tmp_path / "x")],
        "unknown key 'train.lrr'",
    )
    bad(["map", str(out)], "sweeps a grid: map one point of it with --point, one of: train.lr=0.05; train.lr=0.1")
    bad(["map", str(out), "--point", "train.lr=0.3"], "one of: train.lr=0.05")
    mapped = groklab_cli("map", str(out), "--point", "train.lr=0.1", "--states", "2", "--restarts", "1", "--jobs", "1")
    assert mapped.returncode == 0, mapped.stderr
    assert (out / "map" / "train.lr=0.1" / "report.html").is_file()
    assert sorted(pd.read_csv(out / "map" / "train.lr=0.1" / "paths.csv")["seed"].unique()) == [0, 1, 2]


def test_grid_summary_counts_seeds_that_cross():
    from groklab.sweep import grid_summary

    table = pd.DataFrame(
        {
            "model.n_layers": [2, 2, 4, 4, 4],
            "seed": [0, 1, 0, 1, 2],
            "status": ["finished"] * 4 + ["killed"],
            "max_gen_first_word_acc": [0.5, 0.85, 0.9, 0.95, 0.1],
            "final_gen_first_word_acc": [0.4, 0.7, 0.9, 0.8, 0.1],
            "max_id_first_word_acc": [1.0, 0.5, 1.0, 0.97, 1.0],  # depth 2 seed 1 never learns its training set
            "final_t_score": [0.2, 0.4, 0.5, 0.7, 0.0],  # a killed run does not count
            "max_gen_loss": [1.0] * 5,
            "final_gen_loss": [1.0] * 5,
        }
    )  # token-level: not summarized
    summary = grid_summary(table, ["model.n_layers"]).set_index("model.n_layers")
    assert summary.loc[4, "runs"] == 2 and not any("gen_loss" in c for c in summary)
    assert summary.loc[4, "t_score_final_mean"] == pytest.approx(0.6) and "parseval_final_mean" not in summary
    assert (
        summary.loc[2, "gen_first_word_acc_crossed_0.8"] == 0.5
        and summary.loc[4, "gen_first_word_acc_crossed_0.8"] == 1.0
    )
    assert summary.loc[4, "gen_first_word_acc_final_mean"] == pytest.approx(0.85)
    assert list(summary["gen_first_word_acc_id_learned_share"]) == [0.5, 1.0]
    # generalization of the seeds that learnt the in-distribution set alone: depth 2 seed 1 (0.7) left out
    assert list(summary["gen_first_word_acc_final_learnt_mean"]) == pytest.approx([0.4, 0.85])
    assert summary.loc[2, "gen_first_word_acc_final_sd"] == pytest.approx(pd.Series([0.4, 0.7]).std())
    # 95% bootstrap intervals over the seeds that ended: inside the seeds' range, around the mean
    ci = summary.loc[4, ["gen_first_word_acc_final_ci_low", "gen_first_word_acc_final_ci_high"]]
    assert 0.8 <= ci.iloc[0] < 0.85 < ci.iloc[1] <= 0.9
    assert tuple(summary.loc[2, ["gen_first_word_acc_crossed_ci_low", "gen_first_word_acc_crossed_ci_high"]]) == (0, 1)
    assert grid_summary(table, ["model.n_layers"]).equals(grid_summary(table, ["model.n_layers"]))  # seeded


def test_a_sweep_made_before_a_config_field_existed_resumes(tmp_path):
    """A field added to the schema since the sweep was made (with its default), or a reworded description, is no
    difference in config."""
    config = load_preset("quick").model_dump(mode="json")
    old = {**config, "measures": {k: v for k, v in config["measures"].items() if not k.startswith("llc_")}}
    SweepDir.create_or_open(tmp_path / "s", old, [0])
    assert SweepDir.create_or_open(tmp_path / "s", config, [0, 1]).seeds == [0, 1]
    changed = {**config, "train": {**config["train"], "lr": 0.5}}
    with pytest.raises(Exception, match="another config"):
        SweepDir.create_or_open(tmp_path / "s", changed, [0])
    # a preset reworded between groklab versions (its expected text, its outcome's range) still resumes
    reworded = {**config, "expected": "measured again", "source": "", "outcome": {"converged": True}}
    assert SweepDir.create_or_open(tmp_path / "s", reworded, [2]).seeds == [0, 1, 2]


def test_a_grid_sweep_runs_seed_by_seed_across_the_grid():
    """Single runs are scheduled seed 0 at every point, then seed 1, ...: stopped at any moment, every point
    has as many seeds as the others (to within one)."""
    from groklab.sweep import _key, _units

    keys = [_key({"model.n_layers": d}, s) for d in (2, 4, 6) for s in (0, 1, 2)]
    units, capped = _units(load_preset("quick"), keys, 1, {})
    order = [(dict(point)["model.n_layers"], seed) for ((point, seed),) in units]
    assert order[:4] == [(2, 0), (4, 0), (6, 0), (2, 1)] and sorted(order) == sorted(
        (d, s) for d in (2, 4, 6) for s in (0, 1, 2)
    )
    assert not capped


def test_the_live_line_says_how_long_the_runs_to_go_will_take(tmp_path):
    """A sweep of many long runs (a depth sweep over sessions): the runs not started or stopped part-way, at
    the time the ended runs at their grid point took (the median; all ended runs' where none has ended
    there), the stopped ones for the steps they have left."""
    import yaml

    from groklab.store import RunDir
    from groklab.sweep import progress_table, progress_totals, time_ahead

    config = load_preset("structural-qf-lab").model_dump(mode="json")  # 15,000 steps
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, [0, 1, 2], grid={"model.n_layers": [2, 6, 8]})
    plan = {(2, 0): 100, (2, 1): 300, (6, 0): 1000}  # ended runs' training time; depth 2 seed 2 to do
    for (depth, seed), elapsed in plan.items():
        run = RunDir.create(sweep_dir.run_path(seed, {"model.n_layers": depth}), yaml.safe_dump(config))
        run.write_summary({"status": "finished", "last_step": 15000, "elapsed_s": elapsed})
    stopped = RunDir.create(sweep_dir.run_path(1, {"model.n_layers": 6}), yaml.safe_dump(config))
    stopped.write_summary({"status": "interrupted", "last_step": 5000, "elapsed_s": 400})  # a third done
    table = progress_table(sweep_dir)
    # depth 2: 200 (its median) for seed 2; depth 6: 1000 x 2/3 for seed 1, 1000 for seed 2; depth 8, where
    # nothing ended: 300 (the median of 100, 300, 1000) for each of its three seeds
    assert time_ahead(table) == pytest.approx(200 + 2000 / 3 + 1000 + 3 * 300)
    assert "; 6 to go: ~46m06s of one process's time, as the ended runs took" in progress_totals(table)
    assert time_ahead(table[table["status"] != "finished"]) is None  # nothing ended: no estimate


def test_the_live_line_counts_a_batch_once(tmp_path):
    """A batched sweep (seeds 8-15 added to 8 that ended in two batches of 4, two processes): each member's
    elapsed_s is its batch's wall clock, so the runs to go take a quarter of it each in one process's time,
    and the processes running are the batches, not their members."""
    import yaml

    from groklab.store import RunDir
    from groklab.sweep import progress_table, progress_totals, time_ahead

    config = load_preset("quick").model_dump(mode="json")
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, list(range(16)))
    steps = config["train"]["max_steps"]
    for seed in range(8):
        run = RunDir.create(sweep_dir.run_path(seed, {}), yaml.safe_dump(config))
        run.write_summary({"status": "finished", "last_step": steps, "elapsed_s": 8000, "batch": f"b{seed // 4}"})
    table = progress_table(sweep_dir)
    assert time_ahead(table) == pytest.approx(8 * 2000)  # not 8 x 8000: a batch of 4 trained 4 runs at once
    assert "8 to go: ~4h26m of one process's time" in progress_totals(table)
    assert " at " not in progress_totals(table).split("to go")[1]  # nothing runs yet: no processes to divide by
    for seed in range(8, 16):  # the runs to go, in two batches of 4: the first has started, the second not yet
        run = RunDir.create(sweep_dir.run_path(seed, {}), yaml.safe_dump(config))
        run.write_summary({"status": "running", "last_step": 0, "elapsed_s": 1, "batch": f"b{seed // 4}"})
    table = progress_table(sweep_dir)
    running = table.assign(status=["finished"] * 8 + ["running"] * 4 + ["new"] * 4)
    assert "4 to go: ~2h13m of one process's time, as the ended runs took (~2h13m at 1 at a time)" in (
        progress_totals(running)
    )


def test_a_running_structural_sweep_shows_its_papers_metric(tmp_path):
    """The live table of a question-formation sweep shows the first word's accuracy (Murty et al.'s), not
    whichever generalization metric sorts first; under it, the grid's summary over the runs that ended."""
    import yaml

    from groklab.store import RunDir
    from groklab.sweep import progress_table

    config = load_preset("structural-qf-lab").model_dump(mode="json")
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, [0], grid={"model.n_layers": [2, 6]})
    ended, running = (
        RunDir.create(sweep_dir.run_path(0, {"model.n_layers": d}), yaml.safe_dump(config)) for d in (2, 6)
    )
    gen = {"final_gen_aux_rank_acc": 0.1, "final_gen_first_word_acc": 0.4}
    running.write_summary({"status": "running", "pid": os.getpid(), "last_step": 2000, **gen})  # this process: alive
    ended.write_metrics([{"step": 0, "gen_first_word_acc": 0.2}, {"step": 100, "gen_first_word_acc": 0.9}])
    ended.write_summary({"status": "finished", "last_step": 100, **gen, "max_gen_first_word_acc": 0.9})
    row = progress_table(sweep_dir).iloc[1]
    assert (row["metric"], row["value"], row["step"]) == ("gen_first_word_acc", 0.4, 2000)
    shown = cli_in_process("show", str(sweep_dir.path)).stdout
    assert "so far, over the runs that ended" in shown
    lines = [line.split() for line in shown.splitlines() if line.split()[2:3] == ["gen_first_word_acc"]]
    assert [line[:5] for line in lines] == [["2", "1", "gen_first_word_acc", "-", "1.00"]]  # id learnt -, crossed
    # (depth 6 has no run that ended: no line)


def test_show_gives_the_median_convergence_over_all_runs_with_the_unconverged_as_later(tmp_path):
    """A sweep whose runs did not all converge: the median of the converged ones, and over all runs the median
    with the others counted as later — known once the runs it rests on converged, else a lower bound."""
    import yaml

    from groklab.store import RunDir

    config = load_preset("quick").model_dump(mode="json")
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, [0, 1, 2])
    for seed, crossing in ((0, 100), (1, 200), (2, None)):  # seed 2 never reaches 0.9 (its last step: 300)
        run = RunDir.create(sweep_dir.run_path(seed), yaml.safe_dump(config))
        run.write_metrics(
            [
                {"step": s, "test_acc": 0.95 if crossing is not None and s >= crossing else 0.5}
                for s in (0, 100, 200, 300)
            ]
        )
        run.write_summary({"status": "finished", "last_step": 300})
    shown = cli_in_process("show", str(sweep_dir.path)).stdout
    assert (
        "converged (test acc >= 0.9): 2 of 3; convergence step median 150, mean 150, sd 71 of those; "
        "over all 3 (the 1 not converged counted as later): median 200\n" in shown
    )
    # seed 1 never converges either: the median rests on a run that may converge after step 300, a bound
    RunDir(sweep_dir.run_path(1)).write_metrics([{"step": s, "test_acc": 0.5} for s in (0, 100, 200, 300)])
    shown = cli_in_process("show", str(sweep_dir.path)).stdout
    assert (
        "converged (test acc >= 0.9): 1 of 3; over all 3 (the 2 not converged counted as later): median >= 300\n"
        in shown
    )


def test_a_sweeps_report_draws_the_share_of_runs_converged_by_each_step(tmp_path):
    """Kaplan–Meier over the seeds: converged at 100 and 200, one censored at 300 (marked), one still running
    at step 100 (censored there): the share rises to 1/4 at step 100 and 1/4 + 3/4 * 1/2 at 200."""
    import warnings

    import yaml

    from groklab.report.grid import survival_figures
    from groklab.store import RunDir
    from groklab.sweep import sweep_table, write_sweep_report

    config = load_preset("quick").model_dump(mode="json")
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, [0, 1, 2, 3])
    for seed, crossing, last in ((0, 100, 300), (1, 200, 300), (2, None, 300), (3, None, 100)):
        run = RunDir.create(sweep_dir.run_path(seed), yaml.safe_dump(config))
        run.write_metrics(
            [{"step": s, "test_acc": 0.95 if crossing and s >= crossing else 0.5} for s in range(0, last + 1, 100)]
        )
        run.write_summary({"status": "finished", "last_step": last})
    table = sweep_table(sweep_dir)
    (figure,) = survival_figures(table, [], table.attrs)
    curve, low, high, censored = figure.panels[0].traces
    jumps = [(0, 0), (100, 0), (100, 0.25), (200, 0.25), (200, 0.625), (300, 0.625), (300, 0.625)]  # none at 300
    assert list(zip(curve.x, curve.y)) == jumps
    assert all(lo <= y <= hi for lo, y, hi in zip(low.y, curve.y, high.y))
    assert (list(censored.x), list(censored.y)) == ([300, 100], [0.625, 0.25])
    assert "convergence over seeds" in write_sweep_report(sweep_dir).read_text()
    with warnings.catch_warnings():  # every run converged: the interval closes on the estimate, no warning
        warnings.simplefilter("error")
        (figure,) = survival_figures(table.assign(converged=True), [], table.attrs)
    assert list(figure.panels[0].traces[1].y)[-1] == list(figure.panels[0].traces[2].y)[-1] == 1.0
    structural = table.assign(max_gen_first_word_acc=0.5)  # held-out task metrics: not this figure
    assert survival_figures(structural, [], table.attrs) == []


def test_a_run_without_a_checkpoint_yet_shows_no_metric(tmp_path):
    """A run just started (its directory made, no summary yet) names no metric in the live table, as one not
    started: its task's headline metric is not known until its first checkpoint (it was shown as test_acc)."""
    import yaml

    from groklab.store import RunDir
    from groklab.sweep import progress_table

    config = load_preset("structural-qf-lab").model_dump(mode="json")
    sweep_dir = SweepDir.create_or_open(tmp_path / "s", config, [0, 1], grid={"model.n_layers": [2]})
    RunDir.create(sweep_dir.run_path(0, {"model.n_layers": 2}), yaml.safe_dump(config))
    table = progress_table(sweep_dir)
    assert table["status"].tolist() == ["new", "not started"] and table["metric"].tolist() == ["-", "-"]

"""Structural-grokking tasks as language models: tokens, presets at the paper's scale, a tiny run end to end."""

import collections
import math

import pandas as pd
import pytest
import torch

from groklab.config import TaskConfig, load_preset
from groklab.experiment import resolve, run
from groklab.models import build_model
from groklab.store import Run
from groklab.tasks import IGNORE, build_task

SMALL = {"n_train": 300, "n_val": 60, "n_test": 60, "eval_items": 40}


@pytest.mark.parametrize("name, size", [("question_formation", 71), ("tense_inflection", 101), ("dyck", 43)])
def test_vocabulary_and_sequences(name, size):
    """Spec §2: <pad> = 0, sorted word types, <eos>, <sos>; input [SOS] w1..wn, target w1..wn [EOS]."""
    task = build_task(TaskConfig(name=name, **SMALL), seed=0)
    vocab = task.vocab
    assert len(vocab) == size and vocab[0] == "<pad>" and vocab[-2:] == ("<eos>", "<sos>")
    assert list(vocab[1:-2]) == sorted(vocab[1:-2])
    inputs, labels = task.train.inputs, task.train.labels
    assert (inputs[:, 0] == len(vocab) - 1).all()
    real = labels != IGNORE
    lengths = real.sum(1)
    assert (inputs[:, 1:][real[:, 1:]] == labels[:, :-1][real[:, 1:]]).all()  # shifted by one
    assert (labels[torch.arange(len(labels)), lengths - 1] == len(vocab) - 2).all()  # ends in EOS
    assert (inputs[~real] == 0).all()  # right padding
    assert set(task.splits) == {"gen"} and len(task.test) == 60 and len(task.splits["gen"]) == 60
    if name == "question_formation":  # a line: source (sentence . quest|decl) then the output
        words = [vocab[i] for i in inputs[0, 1 : lengths[0]]]
        assert words[words.index(".") + 1] in ("quest", "decl")


@pytest.mark.parametrize("preset, millions", [("structural-qf", 9.53), ("structural-tense", 6.38)])
def test_paper_scale_parameter_counts(preset, millions):
    """Spec §3: untied QF 6L = 9.53M parameters, 4L = 6.38M (the 4L figure is QF's; tense's vocabulary
    of 101 adds 2 x 30 x 512 + 30)."""
    config = load_preset(preset).model_copy(update={"task": TaskConfig(name="question_formation", **SMALL)})
    prepared = resolve(config)
    model = build_model(prepared.model, 0)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2) == millions


def test_lr_schedule_of_the_released_code():
    """Spec §4: 10k-step warmup then linear decay to 0 at 2M: factor 0.854 at 300k, 0.804 at 400k, 0.503 at 1M."""
    from groklab.training import Trainer

    config = load_preset("structural-qf")
    task = build_task(TaskConfig(name="question_formation", **SMALL), 0)
    model = torch.nn.Linear(1, 1)
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = config.train
    for step, factor in ((0, 0.0), (5000, 0.5), (10_000, 1.0), (300_000, 0.854), (400_000, 0.804), (1_000_000, 0.503)):
        assert trainer.lr_at(step) / config.train.lr == pytest.approx(factor, abs=1e-3)
    del task, model


@pytest.fixture(scope="module")
def tiny_qf(tmp_path_factory):
    config = load_preset("structural-qf")
    config = config.model_copy(
        update={
            "task": TaskConfig(name="question_formation", **SMALL),
            "model": config.model.model_copy(
                update={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}
            ),
            "train": config.train.model_copy(
                update={"max_steps": 40, "eval_every": 20, "checkpoint_every": 20, "warmup_steps": 5, "lr": 1e-3}
            ),
            "measures": config.measures.model_copy(update={"every": 20}),
        }
    )
    return config, run(config, tmp_path_factory.mktemp("lm") / "qf", report=False)


def test_tiny_language_model_run(tiny_qf):
    config, result = tiny_qf
    metrics = result.metrics
    assert metrics["step"].tolist() == [0, 20, 40]
    for column in (
        "train_loss",
        "test_loss",
        "gen_loss",
        "gen_acc",
        "id_aux_rank_acc",
        "gen_aux_rank_acc",
        "id_first_word_acc",
        "gen_first_word_acc",
        "gen_exact_match",
        "weight_norm",
        "weight_norm_per_layer",
        "attention_entropy",
    ):
        assert column in metrics and metrics[column].notna().all(), column
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]  # it learns
    assert math.log(71) * 0.5 < metrics["train_loss"].iloc[0] < math.log(71) * 2
    for column in ("id_aux_rank_acc", "gen_first_word_acc", "gen_exact_match"):
        assert metrics[column].between(0, 1).all()
    summary = result.summary
    assert "final_gen_first_word_acc" in summary and "early_stop_gen_first_word_acc" in summary
    assert "memorization_end" not in summary  # the modular-arithmetic phases do not describe an LM run
    assert summary["final_weight_norm"] == pytest.approx(metrics["weight_norm"].iloc[-1])


def test_language_model_report_and_headline(tiny_qf):
    from groklab.dynamics.summary import structural_headline
    from groklab.report import build_report

    _, result = tiny_qf
    lines = dict(structural_headline(result.summary))
    assert set(lines) >= {"id_first_word_acc", "gen_first_word_acc", "id_aux_rank_acc", "early stopping"}
    assert f"{result.summary['final_gen_first_word_acc']:.3f}" in lines["gen_first_word_acc"]
    page, figures = build_report([result])
    structural = next(f for f in figures if f.key == "structural")
    titles = [p.title for p in structural.panels]
    assert titles[:2] == ["aux rank acc", "first word acc"] and "weight norm" in titles
    assert [t.name for t in structural.panels[1].traces] == ["id", "gen"]
    assert "grokked" not in page and "gen_first_word_acc" in page


def test_tiny_run_is_reproducible_and_resumable(tiny_qf, tmp_path):
    """Dropout is on: the same seed gives the same numbers, and `groklab measure` keeps the task metrics."""
    config, first = tiny_qf
    again = run(config, tmp_path / "again", report=False)
    cols = [c for c in first.metrics.columns if c != "elapsed_s"]
    pd.testing.assert_frame_equal(first.metrics[cols], again.metrics[cols])
    from groklab.experiment import measure

    remeasured = measure(again.path).metrics
    pd.testing.assert_frame_equal(remeasured[cols], again.metrics[cols], check_exact=False, rtol=1e-6)


def test_depth_sweep_of_a_structural_preset(tmp_path):
    """`groklab sweep structural-qf-lab --depths ...`: one run per depth and seed, each its own depth, and
    a per-depth summary of the generalization metrics and t-score (Murty et al.'s inverted U)."""
    from conftest import groklab_cli

    small = [f"--set=task.{k}={v}" for k, v in SMALL.items()]
    out = tmp_path / "depths"
    result = groklab_cli(
        "sweep",
        "structural-qf-lab",
        *small,
        "--set",
        "train.max_steps=12",
        "--set",
        "train.eval_every=4",
        "--set",
        "train.checkpoint_every=4",
        "--set",
        "measures.every=4",
        "--set",
        "model.d_model=16",
        "--set",
        "model.d_head=4",
        "--set",
        "model.d_mlp=32",
        "--depths",
        "1,2",
        "--seeds",
        "0-2",
        "--workers",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "table.csv")
    assert sorted(zip(table["model.n_layers"], table["seed"])) == [(d, s) for d in (1, 2) for s in range(3)]
    assert (table["status"] == "finished").all() and table["final_t_score"].notna().all()
    for depth in (1, 2):
        assert Run(out / "runs" / f"model.n_layers={depth}" / "seed_0000").config.model.n_layers == depth
    per_point = result.stdout.split("per grid point (id learnt: share of seeds whose in-distribution twin")[1]
    header, *lines = per_point.splitlines()[1:]
    assert header.split()[:6] == ["model.n_layers", "runs", "metric", "id", "learnt", "crossed"]
    # one line per depth and metric: the share learning the in-distribution set, the share crossing, the
    # final mean and the final mean of the seeds that learnt the in-distribution set, each with its interval
    assert sorted((int(line.split()[0]), line.split()[2]) for line in lines if "gen_first_word_acc" in line) == [
        (1, "gen_first_word_acc"),
        (2, "gen_first_word_acc"),
    ]
    assert "of id learnt" in header
    first_word = [line.split() for line in lines if "gen_first_word_acc" in line]
    assert all(line.count("[") == 3 for line in lines if "gen_first_word_acc" in line)
    # these tiny runs never learn the in-distribution set (id learnt 0.00): none to average over ('-')
    assert all(fields[3] == "0.00" and fields[12] == "-" for fields in first_word)
    assert any(line.split()[2] == "t_score" for line in lines)
    assert "converged (test acc" not in result.stdout  # token-level test accuracy is not the headline here
    # the weight statistics are logged for LM presets too: a training map of one depth, convergence read
    # from the generalization metric
    mapped = groklab_cli(
        "map",
        str(out),
        "--point",
        "model.n_layers=2",
        "--states",
        "2",
        "--restarts",
        "1",
        "--jobs",
        "1",
        "--metric",
        "gen_first_word_acc",
        "--threshold",
        "0.5",
    )
    assert mapped.returncode == 0, mapped.stderr
    page = (out / "map" / "model.n_layers=2" / "report.html").read_text()
    assert "gen_first_word_acc" in page


def test_held_out_items_as_the_released_code_chooses_them(monkeypatch):
    """eval_sample "released" (the paper-scale presets): QF scores every quest item, tense every in-distribution
    item and a fixed 2,000 generalization items drawn from the data seed, Dyck whole strings until >= 5,000
    closers; "first" (the lab presets) the first eval_items of each set. (The scoring functions are replaced by
    recorders of what they are given: which items, not how they are scored, is the question here.)"""
    from groklab.tasks import lm_eval

    scored = []
    for name in ("qf_accuracies", "tense_main_verb_accuracy", "dyck_accuracies"):
        monkeypatch.setattr(
            lm_eval,
            name,
            lambda fn, vocab, items, *a, name=name, **kw: (
                scored.append((name, len(items), kw)) or collections.defaultdict(float)
            ),
        )
    sizes = dict(n_train=50, n_val=300, n_test=2500)
    tasks = {"question_formation": sizes, "tense_inflection": sizes, "dyck": {**sizes, "n_test": 300}}
    seen = {}
    for sample in ("first", "released"):
        scored.clear()
        for name, params in tasks.items():
            build_task(TaskConfig(name=name, eval_items=100, eval_sample=sample, **params), seed=3).evaluate(
                torch.nn.Linear(1, 1)
            )
        seen[sample] = scored[:]
    assert [n for _, n, _ in seen["first"]] == [100] * 6
    (
        (_, qf_id, _),
        (_, qf_gen, _),
        (_, t_id, t_id_kw),
        (_, t_gen, t_gen_kw),
        (_, d_id, d_id_kw),
        (_, d_gen, d_gen_kw),
    ) = seen["released"]
    assert 100 < qf_id < 300 and qf_gen == 2500  # every quest item (the generalization set holds only quest items)
    assert (t_id, t_gen, t_id_kw["max_items"], t_gen_kw["max_items"], t_gen_kw["seed"]) == (300, 2500, None, 2000, 3)
    assert (d_id, d_gen, d_id_kw["max_prefixes"], d_gen_kw["max_prefixes"]) == (300, 300, 5000, 5000)
    assert seen["first"][3][2]["max_items"] is None and seen["first"][4][2]["max_prefixes"] is None

import pytest
import torch
from conftest import TINY

import groklab
from groklab.config import load_config
from groklab.experiment import resolve
from groklab.models import build_model
from groklab.training import Trainer, evaluate


class Rows:
    """A sink that keeps what the trainer reports."""

    def __init__(self):
        self.rows, self.states = [], []

    def on_eval(self, row):
        self.rows.append(row)

    def on_checkpoint(self, state):
        self.states.append(state)


def tiny(*extra, seed=0):
    return resolve(load_config("nanda-mod-add", TINY[1::2] + list(extra), seed=seed))


def trainer_for(prepared):
    cfg = prepared.config
    return Trainer(
        prepared.task, build_model(prepared.model, cfg.resolved_model_seed), cfg.train, seed=cfg.resolved_model_seed
    )


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


def test_warmup_starts_at_lr_zero_so_the_first_two_losses_are_equal():
    """Nanda's schedule: lr factor min(step/10, 1), so the first update is a no-op."""
    prepared = tiny("train.max_steps=3", "train.eval_every=1")
    sink = Rows()
    trainer_for(prepared).run(sink)
    assert sink.rows[0]["train_loss"] == sink.rows[1]["train_loss"]
    assert sink.rows[2]["train_loss"] != sink.rows[1]["train_loss"]
    assert [trainer_for(prepared).lr_at(s) for s in (0, 5, 10, 50)] == [0.0, 5e-4, 1e-3, 1e-3]


@pytest.mark.parametrize("batch", ["full", "16"])
def test_same_config_and_seed_give_bit_identical_metrics(batch):
    runs = []
    for _ in range(2):
        sink = Rows()
        trainer_for(tiny("train.max_steps=40", "train.eval_every=10", f"train.batch_size={batch}")).run(sink)
        runs.append(without_time(sink.rows))
    assert runs[0] == runs[1]
    sink = Rows()
    trainer_for(tiny("train.max_steps=40", "train.eval_every=10", f"train.batch_size={batch}", seed=1)).run(sink)
    assert without_time(sink.rows) != runs[0]


def test_resuming_from_a_state_continues_exactly():
    prepared = tiny(
        "train.max_steps=60",
        "train.eval_every=10",
        "train.checkpoint_every=25",
        "train.batch_size=16",
        "model.dropout=0.1",
    )
    whole = Rows()
    trainer_for(prepared).run(whole)

    first = Rows()
    stop_after = iter(range(1000))
    trainer_for(prepared).run(first, should_stop=lambda: next(stop_after) >= 32)  # interrupted at step 33
    state = first.states[-1]
    assert state.step == 33
    second = Rows()
    resumed = trainer_for(prepared)
    resumed.load_state(state)
    outcome = resumed.run(second)
    assert outcome.status == "finished" and outcome.step == 60
    assert without_time(first.rows + second.rows) == without_time(whole.rows)


def test_early_stop_and_divergence():
    sink = Rows()
    outcome = trainer_for(
        tiny(
            "train.max_steps=500",
            "train.eval_every=10",
            "train.early_stop={metric: train_acc, threshold: 0.5, patience: 2}",
        )
    ).run(sink)
    assert outcome.status == "stopped_early"
    assert [r["train_acc"] >= 0.5 for r in sink.rows[-2:]] == [True, True]

    sink = Rows()
    outcome = trainer_for(tiny("train.max_steps=50", "train.eval_every=5", "train.lr=1e30")).run(sink)
    assert outcome.status == "diverged" and outcome.step < 50


def test_evaluate_scores_answer_classes_only():
    prepared = tiny()
    model = build_model(prepared.model, 0)
    row = evaluate(model, prepared.task)
    assert set(row) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    logits = model(prepared.task.test.inputs, at=-1).detach()
    assert logits.shape[-1] == 14  # model outputs: p + 1 (with `=`)
    manual = torch.nn.functional.cross_entropy(logits[:, :13].double(), prepared.task.test.labels).item()
    assert row["test_loss"] == pytest.approx(manual)


def test_python_api_equals_cli_config(tmp_path):
    run = groklab.run(
        load_config("nanda-mod-add", TINY[1::2] + ["train.max_steps=20", "train.eval_every=10"]), tmp_path / "run"
    )
    assert list(run.metrics["step"]) == [0, 10, 20]
    assert run.summary["status"] == "finished"
    assert run.steps == [0, 20]
    model = run.model()
    assert torch.equal(model.state_dict()["embed.W_E"], run.checkpoint(20)["embed.W_E"])
    assert run.config.task.params()["p"] == 13 and run.config.model_seed == 0

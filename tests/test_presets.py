"""Every preset names its source and expected outcome; `quick` reproduces its outcome here.
(The long presets' outcomes are checked by benchmarks/check_presets.py.)"""

import pytest

from groklab.config import load_preset, preset_names
from groklab.dynamics import check_outcome
from groklab.experiment import resolve
from groklab.store import Run


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_and_names_source_and_outcome(name, mnist_dir, cifar_dir):
    cfg = load_preset(name)
    assert cfg.name == name
    assert len(cfg.source) > 40 and len(cfg.expected) > 20 and cfg.outcome
    data = {"mnist": mnist_dir, "cifar100": cifar_dir}.get(cfg.task.name)  # presets that read files from disk
    if data is not None:
        cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"path": str(data)})})
    resolve(cfg)  # task, model and training settings are all valid


def test_nanda_preset_is_the_papers_setting():
    prepared = resolve(load_preset("nanda-mod-add"))
    cfg, task = prepared.config, prepared.task
    assert (len(task.train), len(task.test)) == (3830, 8939)
    assert (prepared.model.d_vocab, prepared.model.n_outputs, prepared.model.d_mlp) == (114, 114, 512)
    assert prepared.model.normalization == "none" and prepared.model.biases == {"mlp"}
    t = cfg.train
    assert (t.lr, t.weight_decay, t.betas, t.warmup_steps, t.batch_size, t.loss_dtype, t.max_steps) == (
        1e-3,
        1.0,
        (0.9, 0.98),
        10,
        "full",
        "float64",
        40_000,
    )


@pytest.mark.slow
def test_quick_groks(quick_run):
    """Test acc >= 99% is reached well after train acc hit 100% (the preset's expected outcome)."""
    run = Run(quick_run)
    assert run.config == resolve(load_preset("quick")).config  # the preset as it is
    summary, metrics = run.summary, run.metrics
    assert check_outcome(summary, run.config.outcome) == []
    train_100 = int(metrics.loc[metrics.train_acc == 1.0, "step"].iloc[0])
    assert summary["step_test_acc_99"] >= train_100 + 800
    # while train acc is perfect, test acc is still far from it for a long stretch
    middle = metrics[(metrics.step > train_100) & (metrics.step < train_100 + 500)]
    assert (middle.train_acc == 1.0).all() and (middle.test_acc < 0.6).all()

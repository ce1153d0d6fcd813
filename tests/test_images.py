"""MNIST and CIFAR-100 from the standard files on disk (small files in the same formats)."""

import pickle

import numpy as np
import pytest
import torch
from conftest import groklab_cli

import groklab
from groklab.config import TaskConfig, load_config
from groklab.errors import ConfigError
from groklab.tasks import build_task
from groklab.tasks.images import augment_cifar, read_idx


def test_mnist_from_idx_files(mnist_dir):
    task = build_task(TaskConfig(name="mnist", path=str(mnist_dir)), seed=0)
    assert task.train.inputs.shape == (600, 1, 28, 28) and task.test.inputs.shape == (200, 1, 28, 28)
    assert task.train.inputs.max() == pytest.approx(250 / 255) and task.train.inputs.min() >= 0
    raw = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    assert torch.equal(task.train.labels, torch.from_numpy(raw.astype(np.int64)))
    small = build_task(TaskConfig(name="mnist", path=str(mnist_dir), n_train=100), seed=0)
    assert len(small.train) == 100 and len(small.test) == 200


def test_cifar100_from_pickles(cifar_dir):
    task = build_task(TaskConfig(name="cifar100", path=str(cifar_dir)), seed=0)
    assert task.train.inputs.shape == (64, 3, 32, 32) and task.n_classes == 100
    with open(cifar_dir / "cifar-100-python" / "train", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert task.train.labels.tolist() == batch[b"fine_labels"]
    first = batch[b"data"][0].reshape(3, 32, 32)[0, 0, 0] / 255.0
    assert task.train.inputs[0, 0, 0, 0].item() == pytest.approx((first - 0.5071) / 0.2675, rel=1e-5)


def test_cifar_augmentation():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    a = augment_cifar(images, torch.Generator().manual_seed(0))
    b = augment_cifar(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    # every output image is a 32x32 window of the reflect-padded input, possibly mirrored
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2)) for w in windows)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, mnist_dir):
    with pytest.raises(ConfigError, match="task.path is required"):
        build_task(TaskConfig(name="mnist"), seed=0)
    with pytest.raises(ConfigError, match="has no train-images-idx3-ubyte.*MNIST needs"):
        build_task(TaskConfig(name="mnist", path=str(tmp_path)), seed=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (broken / name).write_bytes(b"not idx")
    with pytest.raises(ConfigError, match="not a readable uint8 IDX file"):
        build_task(TaskConfig(name="mnist", path=str(broken)), seed=0)
    with pytest.raises(ConfigError, match="cifar-100-python/train"):
        build_task(TaskConfig(name="cifar100", path=str(tmp_path)), seed=0)
    result = groklab_cli("run", "hu-mnist-mlp", "--set", f"task.path={tmp_path}")
    assert result.returncode == 2 and "MNIST needs" in result.stderr and len(result.stderr.splitlines()) == 1


def test_mnist_mlp_preset_learns_the_small_files(mnist_dir, tmp_path):
    cfg = load_config(
        "hu-mnist-mlp",
        [
            f"task.path={mnist_dir}",
            "train.max_steps=60",
            "train.eval_every=20",
            "train.checkpoint_every=60",
            "measures.every=20",
        ],
    )
    run = groklab.run(cfg, tmp_path / "run", report=False)
    m = run.metrics
    assert list(m["step"]) == [0, 20, 40, 60] and m["test_acc"].iloc[-1] > 0.5
    assert {"l1", "spectral", "variance_lambda", "var_b"} <= set(m.columns)


def test_cifar_resnet_preset_smoke(cifar_dir, tmp_path):
    cfg = load_config(
        "hu-cifar100-resnet18",
        [
            f"task.path={cifar_dir}",
            "train.max_steps=2",
            "train.eval_every=1",
            "train.batch_size=16",
            "train.checkpoint_every=2",
            "measures.every=2",
        ],
    )
    run = groklab.run(cfg, tmp_path / "run", report=False)
    m = run.metrics
    assert list(m["step"]) == [0, 1, 2] and m["train_loss"].notna().all()
    assert m.dropna(subset=["l1"])["step"].tolist() == [0, 2]

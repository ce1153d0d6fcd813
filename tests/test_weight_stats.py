"""Hu et al.'s weight statistics against hand-computed values (spec training-maps.md §3)."""

import math

import pytest
import torch

from groklab.measures import FEATURES, kernel_stats, matrix_stats, weight_statistics
from groklab.measures.weight_stats import included_tensors
from groklab.models import MLP, MLPConfig, ResNet18, ResNetConfig, Transformer, TransformerConfig


def test_matrix_stats_by_hand():
    W = torch.tensor([[3.0, 0.0, -4.0], [0.0, 2.0, 0.0]])  # rectangular 2x3
    s = matrix_stats(W)
    assert s["l1"] == pytest.approx(9.0)
    assert s["l2"] == pytest.approx(math.sqrt(29))
    assert s["trace"] == pytest.approx(5.0)  # 3 + 2 along the main diagonal
    assert s["spectral"] == pytest.approx(5.0)  # singular values 5 and 2
    assert s["code_sparsity"] == pytest.approx(9 / math.sqrt(29))
    assert s["computational_sparsity"] == pytest.approx(1.0)
    assert s["mean_lambda"] == pytest.approx(3.5)
    assert s["variance_lambda"] == pytest.approx(4.5)  # Bessel: ((5-3.5)^2 + (2-3.5)^2) / 1


def test_single_singular_value_and_tiny_values():
    s = matrix_stats(torch.tensor([[1.0, 2.0, 2.0]]))  # a 1 x 3 matrix: one singular value
    assert s["spectral"] == pytest.approx(3.0) and math.isnan(s["variance_lambda"])
    s = matrix_stats(torch.diag(torch.tensor([2.0, 1e-7])))
    assert s["mean_lambda"] == pytest.approx(1.0)  # 1e-7 counts as 0
    assert all(math.isnan(v) for v in matrix_stats(torch.tensor([[1.0, math.nan]])).values())


def test_kernel_stats_by_hand():
    W = torch.zeros(2, 1, 2, 2)
    W[0, 0] = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # l1 7, l2 5
    W[1, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # l1 1, l2 1
    s = kernel_stats(W)
    assert s == pytest.approx({"l1": 4.0, "l2": 3.0, "code_sparsity": (7 / 5 + 1) / 2})


def test_transformer_has_15_matrices_per_layer_and_all_features():
    model = Transformer(TransformerConfig(d_vocab=114, n_ctx=3, n_layers=2), seed=0)
    matrices, kernels, weights, biases = included_tensors(model)
    assert len(matrices) == 30 and not kernels
    assert [tuple(W.shape) for W in matrices[:15]] == [(128, 32)] * 12 + [(128, 128), (128, 512), (512, 128)]
    row = weight_statistics(model)
    assert tuple(row) == FEATURES
    manual_l1 = sum(W.detach().double().abs().sum().item() for W in matrices) / 30
    assert row["l1"] == pytest.approx(manual_l1)
    flat = torch.cat([W.detach().double().flatten() for W in matrices])
    assert row["mean_w"] == pytest.approx(flat.mean().item()) and row["var_w"] == pytest.approx(flat.var().item())
    assert row["median_w"] == pytest.approx(flat.median().item())


def test_mlp_and_resnet_aggregation():
    mlp = MLP(MLPConfig(d_in=40, d_out=1, hidden=(1000,)), seed=0)
    row = weight_statistics(mlp)
    per = [matrix_stats(layer.weight) for layer in mlp.layers]
    assert row["spectral"] == pytest.approx((per[0]["spectral"] + per[1]["spectral"]) / 2)
    assert row["variance_lambda"] == pytest.approx(per[0]["variance_lambda"])  # the 1000 -> 1 layer has one SV: skipped
    assert row["mean_b"] == 0.0 and row["var_b"] == 0.0  # Xavier weights, zero biases

    net = ResNet18(ResNetConfig(num_classes=10), seed=0)
    matrices, kernels, _, biases = included_tensors(net)
    assert len(kernels) == 17 and len(matrices) == 1 and len(biases) == 1  # stem + 16 block convs; fc
    row = weight_statistics(net)
    assert row["spectral"] == pytest.approx(matrix_stats(net.fc.weight)["spectral"])  # from fc alone
    l1s = [kernel_stats(W)["l1"] for W in kernels] + [matrix_stats(net.fc.weight)["l1"]]
    assert row["l1"] == pytest.approx(sum(l1s) / 18)

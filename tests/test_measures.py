"""Progress measures against known answers: a hand-built transformer that computes modular addition by
Fourier multiplication with chosen frequencies (Nanda et al. 2023's algorithm, exactly)."""

import math

import pytest
import torch

from groklab.config import TaskConfig
from groklab.errors import ConfigError
from groklab.measures import (
    component_norms,
    fft1d,
    fft2d,
    fourier_basis,
    frequency_fve,
    gini,
    key_frequencies,
    neuron_clusters,
    progress_measures,
    weight_norms,
)
from groklab.models import Transformer, TransformerConfig
from groklab.models.transformer import MLP
from groklab.tasks import build_task


class BilinearMLP(MLP):
    """post = (x W_in) * (x W_in2): multiplies features exactly (a ReLU MLP only approximates it)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.W_in2 = torch.nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))

    def forward(self, x):
        post = self.hook_post(self.hook_pre((x @ self.W_in) * (x @ self.W_in2)))
        return post @ self.W_out


def fourier_network(p: int, freqs: list[int], scale: float = 8.0) -> Transformer:
    """A 1-layer transformer whose logits are scale * sum_k cos(w_k (a + b - c)), w_k = 2 pi k / p.

    Residual slots: T (token features cos/sin w_k t), A and B (a's and b's features, moved to `=` by two
    heads that attend only to position 0 and 1), S (cos/sin w_k(a+b)), P (one-hot positions). Neurons
    compute cos wa cos wb, sin wa sin wb, cos wa sin wb, sin wa cos wb per frequency; W_out combines
    them into cos w(a+b) = cc - ss and sin w(a+b) = sc + cs; W_U reads cos w(a+b-c) off S.
    """
    K = len(freqs)
    T, A, B, S, P = 0, 2 * K, 4 * K, 6 * K, 8 * K
    cfg = TransformerConfig(
        d_vocab=p + 1, n_ctx=3, d_model=8 * K + 3, n_heads=2, d_head=2 * K, d_mlp=4 * K, biases=frozenset()
    )
    model = Transformer(cfg).double()
    model.blocks[0].mlp = BilinearMLP(cfg).double()
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    t = torch.arange(p, dtype=torch.float64)
    for i, k in enumerate(freqs):
        w = 2 * math.pi * k / p
        sd["embed.W_E"][:p, T + 2 * i], sd["embed.W_E"][:p, T + 2 * i + 1] = torch.cos(w * t), torch.sin(w * t)
        cc, ss, cs, sc = 4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3
        for n, (left, right) in {cc: (0, 0), ss: (1, 1), cs: (0, 1), sc: (1, 0)}.items():
            sd["blocks.0.mlp.W_in"][A + 2 * i + left, n] = 1.0
            sd["blocks.0.mlp.W_in2"][B + 2 * i + right, n] = 1.0
        sd["blocks.0.mlp.W_out"][cc, S + 2 * i], sd["blocks.0.mlp.W_out"][ss, S + 2 * i] = 1.0, -1.0
        sd["blocks.0.mlp.W_out"][sc, S + 2 * i + 1], sd["blocks.0.mlp.W_out"][cs, S + 2 * i + 1] = 1.0, 1.0
        sd["unembed.W_U"][S + 2 * i, :p], sd["unembed.W_U"][S + 2 * i + 1, :p] = (
            scale * torch.cos(w * t),
            scale * torch.sin(w * t),
        )
    sd["pos_embed.W_pos"][torch.arange(3), P + torch.arange(3)] = 1.0
    for head, slot in ((0, A), (1, B)):  # head 0 attends to position 0 (a), head 1 to position 1 (b)
        sd["blocks.0.attn.W_Q"][head, P + 2, 0] = 40.0 * math.sqrt(2 * K)
        sd["blocks.0.attn.W_K"][head, P + head, 0] = 1.0
        for j in range(2 * K):
            sd["blocks.0.attn.W_V"][head, T + j, j] = 1.0
            sd["blocks.0.attn.W_O"][head, j, slot + j] = 1.0
    model.load_state_dict(sd)
    return model.eval()


CASES = [(7, [1, 3]), (13, [2, 5]), (113, [14, 35, 41, 42, 52])]


def task_for(p):
    return build_task(TaskConfig(name="add", p=p, frac_train=0.3, split="nanda"), seed=0)


def all_pairs_loss(model, p):
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    logits = model(torch.stack([a, b, torch.full_like(a, p)], 1), at=-1)[:, :p]
    return torch.nn.functional.cross_entropy(logits.double(), (a + b) % p).item()


@pytest.mark.parametrize("p, freqs", CASES)
def test_hand_built_fourier_network_known_answers(p, freqs):
    model, task = fourier_network(p, freqs), task_for(p)
    full = all_pairs_loss(model, p)
    assert full < 0.1  # it computes modular addition
    m = progress_measures(model, task)
    assert m["key_freqs"] == ",".join(map(str, freqs)) and m["n_key_freqs"] == len(freqs)
    assert m["frac_neurons_explained"] == 1.0
    assert m["restricted_loss"] == pytest.approx(full, rel=1e-6) and m["restricted_acc"] == 1.0
    assert m["excluded_loss"] == pytest.approx(math.log(p), rel=1e-6)  # nothing left: uniform
    assert m["restricted_loss_mlp"] == pytest.approx(full, rel=1e-6)
    assert m["excluded_loss_mlp"] == pytest.approx(math.log(p), rel=1e-6)
    assert m["fourier_mult_loss"] == pytest.approx(full, rel=1e-6)
    assert m["fourier_mult_fve"] == pytest.approx(1.0, abs=1e-9)
    assert m["fourier_mult_excluded_loss"] == pytest.approx(math.log(p), rel=1e-6)
    assert m["fourier_mult_excluded_acc"] <= 2 / p
    # the W_L and W_E rules find the same frequencies; a neuron cluster per frequency
    assert progress_measures(model, task, method="wl_norm")["key_freqs"] == m["key_freqs"]
    assert progress_measures(model, task, method="we_norm")["key_freqs"] == m["key_freqs"]
    clusters = neuron_clusters(model, task)["clusters"]
    assert clusters == {k: 4 for k in freqs}


@pytest.mark.parametrize("p, freqs", CASES[:2])
def test_excluding_frequencies_the_model_does_not_use_changes_nothing(p, freqs):
    model, task = fourier_network(p, freqs), task_for(p)
    unused = [k for k in range(1, (p - 1) // 2 + 1) if k not in freqs][:1]
    m = progress_measures(model, task, key_freqs=unused)
    logits = model(task.train.inputs, at=-1)[:, :p].double()
    train_loss = torch.nn.functional.cross_entropy(logits, task.train.labels).item()
    assert m["key_freqs"] == str(unused[0])
    assert m["excluded_loss"] == pytest.approx(train_loss, rel=1e-9)
    assert m["excluded_loss_mlp"] == pytest.approx(train_loss, rel=1e-9)
    assert m["restricted_loss"] == pytest.approx(math.log(p), rel=1e-6)  # only the constant is kept


def test_per_frequency_excluded_loss():
    p, freqs = 13, [2, 5]
    m = progress_measures(fourier_network(p, freqs), task_for(p), per_frequency=True)
    per = {k: m[f"excluded_loss_f{k}"] for k in range(1, 7)}
    for k in (1, 3, 4, 6):  # removing an unused frequency leaves the loss as it is
        assert per[k] == pytest.approx(per[1], rel=1e-9)
    assert per[2] > 10 * per[1] and per[5] > 10 * per[1]


@pytest.mark.parametrize("p", [3, 7, 113])
def test_basis_is_orthonormal_with_cosines_on_odd_rows(p):
    F = fourier_basis(p)
    assert torch.allclose(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    x = torch.arange(p, dtype=torch.float64)
    assert torch.allclose(F[1], torch.cos(2 * math.pi * x / p) * math.sqrt(2 / p))
    assert torch.allclose(F[2], torch.sin(2 * math.pi * x / p) * math.sqrt(2 / p))
    # 1-D and 2-D transforms are the basis change: a grid F_i(a) F_j(b) lands in cell (i, j)
    i, j = p - 2, p - 1
    assert torch.allclose(fft1d(F[i], F), torch.eye(p, dtype=torch.float64)[i], atol=1e-12)
    coef = fft2d(torch.outer(F[i], F[j]).reshape(p * p), F)
    assert coef[i, j] == pytest.approx(1.0) and coef.abs().sum() == pytest.approx(1.0)


def test_even_modulus_and_non_addition_tasks_are_clear_errors():
    with pytest.raises(ConfigError, match="odd"):
        fourier_basis(114)
    model = Transformer(TransformerConfig(d_vocab=14, n_ctx=3))
    with pytest.raises(ConfigError, match="modular addition"):
        progress_measures(model, build_task(TaskConfig(name="mul", p=13), seed=0))
    with pytest.raises(ConfigError, match="odd prime"):
        progress_measures(
            Transformer(TransformerConfig(d_vocab=16, n_ctx=3)), build_task(TaskConfig(name="add", p=15), 0)
        )


@pytest.mark.parametrize("n", [1, 2, 10, 113])
def test_gini_known_values(n):
    one_hot = torch.zeros(n)
    one_hot[n // 2] = 3.0
    assert gini(one_hot) == pytest.approx(1 - 1 / n)
    assert gini(torch.full((n,), 0.7)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.zeros(n)) == 0.0


def test_gini_orders_concentration():
    assert gini(torch.tensor([1.0, 1.0, 1.0, 5.0])) > gini(torch.tensor([1.0, 2.0, 2.0, 2.0]))


def test_frequency_fve_and_key_frequency_rules():
    p = 11
    F = fourier_basis(p)
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T.double()
    w = 2 * math.pi / p
    neurons = torch.stack(
        [
            torch.cos(3 * w * a) * torch.sin(3 * w * b) + 0.5 * torch.cos(3 * w * b),  # pure frequency 3
            torch.cos(2 * w * (a + b)),  # pure frequency 2
            torch.cos(2 * w * a) + torch.cos(4 * w * b),
        ],
        1,
    )  # half 2, half 4
    fve = frequency_fve(neurons, F)
    assert fve[0, 2] == pytest.approx(1.0) and fve[1, 1] == pytest.approx(1.0)
    assert fve[2, 1] == pytest.approx(0.5) and fve[2, 3] == pytest.approx(0.5)
    assert key_frequencies(fve, min_fve=0.85) == [2, 3]
    assert key_frequencies(fve, min_fve=0.4, min_share=0.0) == [2, 3]
    assert key_frequencies(method="given", given=[5, 1, 5]) == [1, 5]
    norms = torch.tensor([0.01, 1.0, 0.02, 0.5, 0.05])
    assert key_frequencies(wl_norms=norms, method="wl_norm", rel_threshold=0.1) == [2, 4]


def test_component_norms_of_an_embedding_with_two_frequencies():
    p = 13
    F = fourier_basis(p)
    W = torch.stack([F[3], 2 * F[8]], 1)  # (p, 2): cos 2 and sin 4 components
    norms = component_norms(W, F)
    assert norms[3] == pytest.approx(1.0) and norms[8] == pytest.approx(2.0)
    assert norms.sum() == pytest.approx(3.0)


def test_weight_norms():
    model = Transformer(TransformerConfig(d_vocab=14, n_ctx=3), seed=0)
    row = weight_norms(model)
    total = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert row["sum_sq_weights"] == pytest.approx(total)
    assert row["sum_sq_embed.W_E"] == pytest.approx(float((model.embed.W_E.detach().double() ** 2).sum()))
    assert len(row) == 1 + len(list(model.parameters()))


def test_measures_live_and_post_hoc(tmp_path):
    """Measures land as metrics columns during training; `measure` recomputes them from checkpoints with
    other key frequencies and leaves the training columns untouched."""
    import groklab
    from groklab.config import load_config
    from groklab.experiment import measure

    cfg = load_config(
        "quick",
        [
            "train.max_steps=40",
            "train.eval_every=10",
            "train.checkpoint_every=20",
            "measures={every: 20, key_freqs: each}",
        ],
    )
    run = groklab.run(cfg, tmp_path / "run")
    m = run.metrics
    assert list(m["step"]) == [0, 10, 20, 30, 40]
    measured = m.dropna(subset=["restricted_loss"])
    assert list(measured["step"]) == [0, 20, 40]  # every 20 steps, as configured
    assert {"gini_W_E", "gini_W_L", "excluded_loss_mlp", "fourier_mult_fve", "sum_sq_weights", "key_freqs"} <= set(m)
    before = m[["step", "train_loss", "test_acc", "elapsed_s"]].copy()
    again = measure(run.path, [1, 2])  # checkpoints at 0, 20, 40
    after = again.metrics
    assert after[["step", "train_loss", "test_acc", "elapsed_s"]].equals(before)
    assert list(after.dropna(subset=["restricted_loss"])["step"]) == [0, 20, 40]
    assert set(after["key_freqs"].dropna()) == {"1,2"}
    # "final": the last checkpoint's key frequencies everywhere
    final = measure(run.path, "final").metrics
    assert final["key_freqs"].dropna().nunique() == 1


def test_final_key_frequencies_keep_the_other_measures_between_checkpoints(tmp_path):
    """key_freqs "final" recomputes the Fourier measures at the checkpoints when the run ends; the weight
    statistics, measured at every evaluation, stay at the rows between checkpoints."""
    import groklab
    from groklab.config import load_config

    cfg = load_config(
        "quick",
        [
            "train.max_steps=40",
            "train.eval_every=10",
            "train.checkpoint_every=20",
            "measures={every: 10, key_freqs: final, names: [weights, fourier, weight_stats]}",
        ],
    )
    m = groklab.run(cfg, tmp_path / "run", report=False).metrics
    assert list(m["step"]) == [0, 10, 20, 30, 40]
    assert m["l2"].notna().all() and m["sum_sq_weights"].notna().all()  # kept at steps 10 and 30
    assert list(m.dropna(subset=["restricted_loss"])["step"]) == [0, 20, 40]  # recomputed at the checkpoints only
    assert m["key_freqs"].dropna().nunique() == 1


def test_measures_on_a_task_without_a_fourier_circuit_is_a_config_error(tmp_path):
    import groklab
    from groklab.config import load_config

    cfg = load_config("quick", ["task.name=mul", "measures={names: [weights, fourier]}"])
    with pytest.raises(ConfigError, match="modular addition"):
        groklab.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = load_config("quick", ["measures={names: [weights, entropy]}"])
    with pytest.raises(ConfigError, match="unknown measure set 'entropy'"):
        groklab.run(cfg, tmp_path / "run")

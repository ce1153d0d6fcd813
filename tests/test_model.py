import math

import pytest
import torch

from groklab.config import ModelConfig
from groklab.models import Transformer, TransformerConfig, build_model, model_config

NANDA = dict(d_vocab=114, n_ctx=3)

TL_SHAPES = {  # TransformerLens names and shapes for Nanda's model
    "embed.W_E": (114, 128),
    "pos_embed.W_pos": (3, 128),
    "blocks.0.attn.W_Q": (4, 128, 32),
    "blocks.0.attn.W_K": (4, 128, 32),
    "blocks.0.attn.W_V": (4, 128, 32),
    "blocks.0.attn.W_O": (4, 32, 128),
    "blocks.0.mlp.W_in": (128, 512),
    "blocks.0.mlp.b_in": (512,),
    "blocks.0.mlp.W_out": (512, 128),
    "blocks.0.mlp.b_out": (128,),
    "unembed.W_U": (128, 114),
}


def test_biases_at_pytorch_init_as_in_murtys_released_model():
    """bias_init "pytorch": nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every bias, the weights unchanged."""
    murty = dict(
        d_vocab=30,
        n_ctx=8,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=64,
        init="xavier",
        biases=frozenset({"mlp", "unembed"}),
    )
    zero = Transformer(TransformerConfig(**murty), seed=0).state_dict()
    kept = Transformer(TransformerConfig(**murty, bias_init="pytorch"), seed=0).state_dict()
    biases = [k for k in zero if k.rsplit(".", 1)[-1].startswith("b_")]
    assert sorted(biases) == [
        "blocks.0.mlp.b_in",
        "blocks.0.mlp.b_out",
        "blocks.1.mlp.b_in",
        "blocks.1.mlp.b_out",
        "unembed.b_U",
    ]
    assert all(torch.equal(zero[k], kept[k]) for k in zero if k not in biases)
    for name in biases:
        fan_in = 64 if name.endswith("b_out") else 16
        bias = kept[name]
        assert (zero[name] == 0).all() and 0.4 / math.sqrt(fan_in) < bias.abs().max() <= 1 / math.sqrt(fan_in), name


def test_nanda_model_names_shapes_and_parameter_count():
    model = Transformer(TransformerConfig(**NANDA))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == TL_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 226_816


def test_nanda_init_scales_and_seeding():
    model = Transformer(TransformerConfig(**NANDA), seed=0)
    sd = model.state_dict()
    for name in ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out"):
        assert sd[name].std().item() == pytest.approx(1 / math.sqrt(128), rel=0.05), name
    assert sd["unembed.W_U"].std().item() == pytest.approx(1 / math.sqrt(114), rel=0.05)
    assert (sd["blocks.0.mlp.b_in"] == 0).all()
    again, other = Transformer(TransformerConfig(**NANDA), seed=0), Transformer(TransformerConfig(**NANDA), seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in sd.items())
    assert not torch.equal(sd["embed.W_E"], other.state_dict()["embed.W_E"])
    scaled = Transformer(TransformerConfig(**NANDA, init_scale=3.0), seed=0)
    assert torch.allclose(scaled.state_dict()["embed.W_E"], 3 * sd["embed.W_E"])


def test_pytorch_init_matches_torch_nn_defaults():
    """Power et al.'s code uses torch.nn defaults: Embedding N(0, 1), Linear U(+-1/sqrt(fan_in))."""
    sd = Transformer(TransformerConfig(**NANDA, init="pytorch"), seed=0).state_dict()
    assert sd["embed.W_E"].std().item() == pytest.approx(1.0, rel=0.05)
    for name, fan_in in (
        ("blocks.0.attn.W_Q", 128),
        ("blocks.0.attn.W_O", 128),
        ("blocks.0.mlp.W_in", 128),
        ("blocks.0.mlp.W_out", 512),
        ("unembed.W_U", 128),
    ):
        bound = 1 / math.sqrt(fan_in)
        assert sd[name].abs().max().item() <= bound
        assert sd[name].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name


def test_optional_biases_and_output_size():
    cfg = TransformerConfig(**NANDA, biases=frozenset({"attn", "mlp", "unembed"}), d_vocab_out=113)
    names = set(Transformer(cfg).state_dict())
    assert {"blocks.0.attn.b_Q", "blocks.0.attn.b_O", "unembed.b_U"} <= names
    assert Transformer(cfg)(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 113)
    assert "blocks.0.attn.b_Q" not in Transformer(TransformerConfig(**NANDA)).state_dict()


VARIANTS = {
    "nanda": {},
    "two-layer pre-LN gelu sinusoidal": dict(
        n_layers=2,
        normalization="pre",
        act="gelu",
        positional="sinusoidal",
        biases=frozenset({"attn", "mlp", "unembed"}),
        init="gpt2",
    ),
    "three-layer post-LN": dict(n_layers=3, normalization="post", biases=frozenset({"attn", "mlp"})),
}


def _randomize_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch", [5, 3000])  # 3000 sequences take the input-table path, 5 do not
def test_scored_positions_and_tables_equal_the_plain_forward(variant, batch):
    """The fast paths (last-block queries at scored positions only; first layer from a table of
    (position, token) pairs) give the plain full forward's logits and gradients."""
    model = Transformer(
        TransformerConfig(d_vocab=31, n_ctx=4, d_model=32, n_heads=2, d_head=16, d_mlp=64, **VARIANTS[variant]), seed=0
    ).double()
    _randomize_biases(model)
    tokens = torch.randint(31, (batch, 4), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(31, (batch,), generator=torch.Generator().manual_seed(2))

    def logits_and_grads(fast: bool, at):
        model.zero_grad()
        with model.hooks({"hook_embed": lambda x: None}) if not fast else torch.enable_grad():  # forces the plain path
            logits = model(tokens, at=at) if fast else model(tokens)[:, at]
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, 31), labels.repeat_interleave(logits.shape[1] if logits.dim() == 3 else 1)
        ).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    for at in (-1, 2, slice(1, 3)):
        plain, plain_grads = logits_and_grads(False, at)
        fast, fast_grads = logits_and_grads(True, at)
        assert fast.shape == plain.shape
        assert torch.allclose(fast, plain, atol=1e-10), at
        for name in plain_grads:
            assert torch.allclose(fast_grads[name], plain_grads[name], atol=1e-10), (at, name)


def test_causal_mask():
    model = Transformer(TransformerConfig(d_vocab=10, n_ctx=5, d_model=16, n_heads=2, d_head=8, d_mlp=32), seed=0)
    tokens = torch.randint(10, (4, 5), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 10
    with torch.no_grad():  # changing later tokens leaves earlier positions' logits unchanged
        assert torch.allclose(model(tokens)[:, :3], model(changed)[:, :3])
        assert not torch.allclose(model(tokens)[:, 3], model(changed)[:, 3])
    _, cache = model.run_with_cache(tokens)
    pattern = cache["blocks.0.attn.hook_pattern"]  # (batch, head, q, k)
    assert torch.all(pattern.triu(1) == 0) and torch.allclose(pattern.sum(-1), torch.ones(4, 2, 5))


def test_run_with_cache_names_shapes_and_values():
    model = Transformer(TransformerConfig(**NANDA), seed=0)
    tokens = torch.tensor([[1, 2, 113], [5, 7, 113]])
    logits, cache = model.run_with_cache(tokens)
    shapes = {k: tuple(v.shape) for k, v in cache.items()}
    assert shapes["blocks.0.hook_resid_pre"] == (2, 3, 128)
    assert shapes["blocks.0.attn.hook_pattern"] == (2, 4, 3, 3)
    assert shapes["blocks.0.mlp.hook_pre"] == shapes["blocks.0.mlp.hook_post"] == (2, 3, 512)
    assert shapes["blocks.0.hook_resid_mid"] == shapes["blocks.0.hook_resid_post"] == (2, 3, 128)
    W = model.state_dict()
    assert torch.allclose(cache["blocks.0.hook_resid_pre"], W["embed.W_E"][tokens] + W["pos_embed.W_pos"])
    assert torch.allclose(cache["blocks.0.mlp.hook_post"], torch.relu(cache["blocks.0.mlp.hook_pre"]))
    assert torch.allclose(logits, cache["blocks.0.hook_resid_post"] @ W["unembed.W_U"], atol=1e-5)


def test_hooks_patch_activations():
    model = Transformer(TransformerConfig(**NANDA), seed=0)
    tokens = torch.tensor([[1, 2, 113]])
    with model.hooks({"blocks.0.mlp.hook_post": lambda post: torch.zeros_like(post)}):
        _, cache = model.run_with_cache(tokens, at=-1)
        patched = model(tokens, at=-1)
    W = model.state_dict()
    direct = (cache["blocks.0.hook_resid_mid"] + W["blocks.0.mlp.b_out"]) @ W["unembed.W_U"]
    assert torch.allclose(patched, direct[:, -1], atol=1e-5)
    with pytest.raises(KeyError, match="no hook point"), model.hooks({"blocks.0.mlp.hook_nope": print}):
        pass


def test_model_config_from_task_and_errors():
    from groklab.config import TaskConfig
    from groklab.errors import ConfigError
    from groklab.tasks import build_task

    task = build_task(TaskConfig(name="add", p=113), seed=0)
    cfg = model_config(ModelConfig(outputs="answers", n_layers=2), task)
    assert (cfg.d_vocab, cfg.n_ctx, cfg.n_outputs, cfg.n_layers) == (114, 3, 113, 2)
    with pytest.raises(ConfigError, match="unknown key 'model.n_layer'.*did you mean 'model.n_layers'"):
        model_config(ModelConfig(n_layer=2), task)
    with pytest.raises(ConfigError, match="model.d_model"):
        model_config(ModelConfig(d_model="wide"), task)
    with pytest.raises(ConfigError, match="set from the task"):
        model_config(ModelConfig(d_vocab=5), task)
    with pytest.raises(ConfigError, match="takes vectors or images"):
        model_config(ModelConfig(arch="mlp"), task)
    assert build_model(cfg, seed=0).cfg.n_layers == 2


def test_dropout_drops_p_and_keeps_the_expectation():
    from groklab.models.transformer import Dropout

    drop, x = Dropout(0.1), torch.ones(200, 1001)
    torch.manual_seed(0)
    y = drop(x)
    assert y.unique().tolist() == [0.0, pytest.approx(32768 / (32768 - 3277))]
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.003  # 200k draws: sd 0.0007
    assert abs(float(y.mean()) - 1.0) < 0.005
    dropped = (y == 0).flatten().float()  # each of the four 15-bit lanes of a 63-bit draw drops alike
    assert all(abs(float(dropped[i::4].mean()) - 0.1) < 0.005 for i in range(4))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded by the global generator
    x.requires_grad_(True)
    torch.manual_seed(0)
    drop(x).sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.equal(drop.eval()(x), x)


def test_dropout_under_vmap_draws_each_member_its_own_mask():
    """A population's members (vmap, randomness="different") drop p each, independently, seeded."""
    from torch.func import vmap

    from groklab.models.transformer import Dropout

    drop, x = Dropout(0.1), torch.ones(3, 50, 4, 1001)  # 3 members; a last dimension not a multiple of 4
    torch.manual_seed(0)
    y = vmap(drop, randomness="different")(x)
    assert y.unique().tolist() == [0.0, pytest.approx(32768 / (32768 - 3277))]
    dropped = (y == 0).float()
    assert all(abs(float(dropped[m].mean()) - 0.1) < 0.003 for m in range(3))  # 200k draws each: sd 0.0007
    agree = float((dropped[0] == dropped[1]).float().mean())
    assert abs(agree - (0.9**2 + 0.1**2)) < 0.005  # independent masks agree on 82%; the same mask on 100%
    assert all(abs(float(dropped[..., i::4].mean()) - 0.1) < 0.005 for i in range(4))
    torch.manual_seed(0)
    assert torch.equal(vmap(drop, randomness="different")(x), y)

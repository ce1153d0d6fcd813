"""`groklab import nanda|transformer-lens`: foreign checkpoints, written here by the tests themselves from groklab
models converted by hand to the foreign layout, come back as runs with the same logits on every input; their
loss curves and checkpoint lists come along; measure and report work on them; bad files are one line, exit 2,
and nothing written."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random

import pytest
import torch
import yaml
from conftest import cli_in_process as groklab_cli

from groklab.models import Transformer, TransformerConfig
from groklab.store import Run

P = 13  # modulus: d_vocab 14 ([a, b, =]), 169 inputs
TOKENS = torch.stack([*torch.cartesian_prod(torch.arange(P), torch.arange(P)).T, torch.full((P * P,), P)], 1)


def refused(tmp_path, args, match):
    """Exit code 2, one line on stderr containing `match`, and nothing left behind in tmp_path."""
    before = sorted(p.name for p in tmp_path.iterdir())
    result = groklab_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert match in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "an import left something behind"


def model(seed: int, **cfg) -> Transformer:
    """A tiny groklab transformer with every parameter random (biases and LayerNorm weights too)."""
    cfg = {"d_vocab": P + 1, "n_ctx": 3, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, **cfg}
    m = Transformer(TransformerConfig(**cfg), seed=seed).eval()
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name.endswith(".w") else 0.0))
    return m


def logits(m) -> torch.Tensor:
    with torch.no_grad():
        return m(TOKENS)  # (169, 3, outputs): every position of every input


# -- Nanda et al.'s layout, written out by hand from transformers.py (not by calling the importer) ----------
def to_nanda(m: Transformer) -> dict[str, torch.Tensor]:
    sd, cfg = m.state_dict(), m.cfg
    H, E, D = cfg.n_heads, cfg.d_head, cfg.d_model
    out = {
        "embed.W_E": sd["embed.W_E"].T.clone(),  # (d_model, d_vocab)
        "pos_embed.W_pos": sd["pos_embed.W_pos"].clone(),
        "unembed.W_U": sd["unembed.W_U"].clone(),  # (d_model, d_vocab)
    }
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        for n in ("W_K", "W_Q", "W_V"):
            out[b + "attn." + n] = torch.stack([sd[b + "attn." + n][h].T for h in range(H)]).clone()  # (H, E, D)
        out[b + "attn.W_O"] = torch.cat([sd[b + "attn.W_O"][h] for h in range(H)], 0).T.clone()  # (D, H*E)
        out[b + "attn.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx))
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = sd[b + "mlp.W_in"].T.clone(), sd[b + "mlp.b_in"].clone()
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = sd[b + "mlp.W_out"].T.clone(), sd[b + "mlp.b_out"].clone()
    assert out["blocks.0.attn.W_O"].shape == (D, H * E)
    return out


def nanda_forward(w: dict[str, torch.Tensor], x: torch.Tensor, n_layers: int = 1) -> torch.Tensor:
    """Their Transformer.forward (transformers.py, use_ln False), einsum for einsum."""
    h = torch.einsum("dbp -> bpd", w["embed.W_E"][:, x]) + w["pos_embed.W_pos"][: x.shape[-1]]
    for i in range(n_layers):
        b = f"blocks.{i}."
        k, q, v = (torch.einsum("ihd,bpd->biph", w[b + f"attn.W_{n}"], h) for n in "KQV")
        scores = torch.einsum("biph,biqh->biqp", k, q)
        n = x.shape[-1]
        mask = w[b + "attn.mask"][:n, :n]
        attn = torch.softmax((torch.tril(scores) - 1e10 * (1 - mask)) / math.sqrt(k.shape[-1]), dim=-1)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z_flat = z.permute(0, 2, 1, 3).flatten(2)  # 'b i q h -> b q (i h)'
        h = h + torch.einsum("df,bqf->bqd", w[b + "attn.W_O"], z_flat)
        pre = torch.einsum("md,bpd->bpm", w[b + "mlp.W_in"], h) + w[b + "mlp.b_in"]
        h = h + torch.einsum("dm,bpm->bpd", w[b + "mlp.W_out"], torch.relu(pre)) + w[b + "mlp.b_out"]
    return h @ w["unembed.W_U"]


def nanda_split(p: int, frac: float, seed: int) -> tuple[list, list]:
    """gen_train_test of transformers.py."""
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac * len(pairs))
    return pairs[:div], pairs[div:]


@dataclasses.dataclass(frozen=True)
class NandaConfig:
    """A stand-in for transformers.py's Config dataclass (never importable where the file is read)."""

    lr: float = 1e-3
    weight_decay: float = 1.0
    p: int = 113
    fn_name: str = "add"
    frac_train: float = 0.3
    seed: int = 0
    save_every: int = 100
    d_vocab: int = 114


NANDA_CONFIG = {
    "lr": 1e-3,
    "weight_decay": 1.0,
    "p": P,
    "fn_name": "add",
    "frac_train": 0.3,
    "seed": 0,
    "save_every": 100,
}


def test_the_hand_conversion_is_their_model():
    m = model(0)
    assert torch.allclose(nanda_forward(to_nanda(m), TOKENS), logits(m), atol=1e-5)


def test_nanda_full_run_imports_every_checkpoint_with_identical_logits(tmp_path):
    models = {epoch: model(seed) for seed, epoch in enumerate((0, 100, 200))}
    train_losses, test_losses = [4.0 / (1 + e) for e in range(201)], [5.0 - e / 100 for e in range(0, 201, 10)]
    torch.save(
        {
            "model": to_nanda(models[200]),
            "config": NANDA_CONFIG,
            "state_dicts": [to_nanda(m) for m in models.values()],
            "epochs": list(models),
            "train_losses": train_losses,
            "test_losses": test_losses,  # one every 10 epochs, as in their saved runs
        },
        tmp_path / "full_run_data.pth",
    )
    out = tmp_path / "run"
    result = groklab_cli("import", "nanda", str(tmp_path / "full_run_data.pth"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (
        "task.p = 13" in result.stdout
        and "d_model: 16" in result.stdout
        and "status            imported" in result.stdout
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["task"] == {"name": "add", "p": P, "frac_train": 0.3, "split": "nanda", "inputs": "tokens"}
    assert {k: config["model"][k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "biases")} == {
        "n_layers": 1,
        "d_model": 16,
        "n_heads": 2,
        "d_head": 8,
        "d_mlp": 32,
        "biases": ["mlp"],
    }
    run = Run(out)
    assert run.steps == [0, 100, 200] and run.status == "imported"
    for epoch, m in models.items():
        assert torch.equal(logits(run.model(epoch)), logits(m)), epoch
    assert list(run.metrics["step"]) == [0, 100, 200]
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(run.metrics.columns)
    assert run.summary["last_step"] == 200 and run.summary["status"] == "imported"
    source = run.dir.read_source()
    assert source["format"] == "nanda" and len(source["curves"]["train_loss"]) == 201
    assert source["curves"]["test_loss"]["200"] == test_losses[-1] and "190" in source["curves"]["test_loss"]

    assert groklab_cli("measure", str(out)).returncode == 0
    run = Run(out)
    assert "gini_W_E" in run.metrics and run.metrics["gini_W_E"].notna().all() and run.status == "imported"
    report = groklab_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert (out / "report.html").is_file()
    from groklab.report import build_report

    (own,) = [f for f in build_report([Run(out)])[1] if f.key == "source_curves"]  # the file's curves drawn
    traces = {t.name: t for t in own.panels[0].traces}
    assert list(traces["test_loss, the file's"].y) == list(test_losses) and len(traces["train_loss, groklab's"].x) == 3
    refused(tmp_path, ["run", "--resume", str(out)], "was imported")


def test_nanda_trainer_directory_and_its_split(tmp_path):
    """transformers.py's Trainer directory: init.pth (with the split), EPOCH.pth files, final.pth (curves)."""
    run_dir = tmp_path / "grok_1700000000"
    run_dir.mkdir()
    models = {0: model(0), 100: model(1), 150: model(2)}
    train, test = nanda_split(P, 0.3, 0)
    torch.save({"model": to_nanda(models[0]), "train_data": train, "test_data": test}, run_dir / "init.pth")
    for epoch in (0, 100):
        torch.save(
            {"model": to_nanda(models[epoch]), "train_loss": 1.0, "test_loss": 2.0, "epoch": epoch},
            run_dir / f"{epoch}.pth",
        )
    final = {"model": to_nanda(models[150]), "train_losses": [1.0] * 150, "test_losses": [2.0] * 150, "epoch": 150}
    torch.save({**final, "optimizer": {"state": {}, "param_groups": []}}, run_dir / "final.pth")
    out = tmp_path / "run"
    result = groklab_cli("import", "nanda", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "split: the file's train/test indices are the config's" in result.stdout
    run = Run(out)
    assert run.steps == [0, 100, 150]
    for epoch, m in models.items():
        assert torch.equal(logits(run.model(epoch)), logits(m))
    assert len(run.task.train) == len(train)


def test_nanda_config_overrides_and_their_d_vocab_bug(tmp_path):
    """Config(p=11) keeps the class-level d_vocab (spec §7 #12): the unused tokens are dropped, exactly."""
    m = model(0)  # d_vocab 14
    config = NandaConfig(**{**NANDA_CONFIG, "p": 11})  # their notebooks pickle the Config object itself
    torch.save({"model": to_nanda(m), "config": config}, tmp_path / "p11.pth")
    out = tmp_path / "run"
    result = groklab_cli("import", "nanda", str(tmp_path / "p11.pth"), "--out", str(out), "--set", "task.name=sub")
    assert result.returncode == 0, result.stderr
    run = Run(out)
    assert run.config.task.name == "sub" and run.config.task.params()["p"] == 11
    tokens = TOKENS[(TOKENS[:, 0] < 11) & (TOKENS[:, 1] < 11)].clone()
    tokens[:, 2] = 11
    with torch.no_grad():
        assert torch.equal(run.model()(tokens), m(tokens)[..., :12])
    refused(
        tmp_path,
        ["import", "nanda", str(tmp_path / "p11.pth"), "--out", str(tmp_path / "x"), "--set", "model.d_model=8"],
        "in the model this config builds",
    )


# -- TransformerLens -------------------------------------------------------------------------------------------
def tl_state(m: Transformer) -> dict[str, torch.Tensor]:
    """A HookedTransformer's state dict for a groklab model, by hand: the same names and shapes, biases it lacks
    as zeros, and TransformerLens' buffers."""
    cfg = m.cfg
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        for name, shape in (
            ("b_Q", (cfg.n_heads, cfg.d_head)),
            ("b_K", (cfg.n_heads, cfg.d_head)),
            ("b_V", (cfg.n_heads, cfg.d_head)),
            ("b_O", (cfg.d_model,)),
        ):
            sd.setdefault(b + "attn." + name, torch.zeros(shape))
        sd.setdefault(b + "mlp.b_in", torch.zeros(cfg.d_mlp))
        sd.setdefault(b + "mlp.b_out", torch.zeros(cfg.d_model))
        sd[b + "attn.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx)).bool()
        sd[b + "attn.IGNORE"] = torch.tensor(-1e5)
    sd.setdefault("unembed.b_U", torch.zeros(cfg.n_outputs))
    return sd


def tl_config(m: Transformer, **extra) -> dict:
    """The HookedTransformerConfig fields (as cfg.to_dict() has them) of a groklab model."""
    c = m.cfg
    return {
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "n_heads": c.n_heads,
        "d_head": c.d_head,
        "d_mlp": c.d_mlp,
        "d_vocab": c.d_vocab,
        "d_vocab_out": c.n_outputs,
        "n_ctx": c.n_ctx,
        "act_fn": c.act,
        "normalization_type": {"none": None, "pre": "LN"}[c.normalization],
        "positional_embedding_type": "standard",
        "eps": 1e-5,
        "attn_scale": math.sqrt(c.d_head),
        "seed": 7,
        **extra,
    }


def test_tl_state_dict_with_json_config_beside_it(tmp_path):
    """The documented layout, without TransformerLens installed: a bare state dict and its config as JSON."""
    m = model(3, normalization="pre", biases=frozenset({"attn", "mlp", "unembed"}), act="gelu")
    torch.save(tl_state(m), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(tl_config(m, dtype="torch.float32")))
    out = tmp_path / "run"
    refused(tmp_path, ["import", "transformer-lens", str(tmp_path / "model.pt"), "--out", str(out)], "give --task")
    result = groklab_cli("import", "transformer-lens", str(tmp_path / "model.pt"), "--out", str(out), "--task", "add")
    assert result.returncode == 0, result.stderr
    run = Run(out)
    assert run.config.model.params()["normalization"] == "pre" and run.config.model.params()["act"] == "gelu"
    assert torch.equal(logits(run.model()), logits(m))


def test_tl_folded_layernorm_and_zero_biases(tmp_path):
    """LNPre (LayerNorm folded into the next weights: no ln weights in the file) and all-zero biases."""
    m = model(4, normalization="pre", biases=frozenset())
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                p.fill_(1.0 if name.endswith(".w") else 0.0)
    sd = {k: v for k, v in tl_state(m).items() if ".ln" not in k and not k.startswith("ln_final")}
    torch.save({"state_dict": sd, "config": tl_config(m, normalization_type="LNPre")}, tmp_path / "folded.pth")
    out = tmp_path / "run"
    result = groklab_cli("import", "transformer-lens", str(tmp_path / "folded.pth"), "--out", str(out), "--task", "add")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["biases"] == []
    assert torch.equal(logits(Run(out).model()), logits(m))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("positional_embedding_type", "rotary", "rotary positions"),
        ("parallel_attn_mlp", True, "attention and MLP in parallel"),
        ("normalization_type", "RMS", "RMSNorm"),
        ("act_fn", "gelu_new", "act_fn='gelu_new'"),
        ("attn_only", True, "attention-only"),
    ],
)
def test_tl_features_groklab_cannot_represent_are_refused(tmp_path, field, value, match):
    m = model(0, biases=frozenset())
    torch.save({"model": tl_state(m), "config": tl_config(m, **{field: value})}, tmp_path / "m.pth")
    refused(
        tmp_path,
        ["import", "transformer-lens", str(tmp_path / "m.pth"), "--out", str(tmp_path / "run"), "--task", "add"],
        match,
    )


def test_real_hooked_transformer_round_trip(tmp_path):
    """A real HookedTransformer gets the hand-converted weights, computes the same logits as groklab, is saved as
    the TransformerLens grokking demo saves (config object, checkpoint list, curves, split) and imports back."""
    tl = pytest.importorskip("transformer_lens")
    import warnings

    def hooked(m: Transformer):
        c = tl_config(m)
        cfg = tl.HookedTransformerConfig(**{k: v for k, v in c.items() if k not in ("eps", "attn_scale")}, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ht = tl.HookedTransformer(cfg)
        state = ht.state_dict()
        params = dict(ht.named_parameters())
        state.update({k: v for k, v in tl_state(m).items() if k in params})  # weights; TransformerLens' own buffers
        ht.load_state_dict(state)
        return ht.eval()

    for kw in (
        {"biases": frozenset(), "d_vocab_out": P},
        {"normalization": "pre", "biases": frozenset({"attn", "mlp", "unembed"}), "act": "gelu"},
    ):
        m = model(5, **kw)
        with torch.no_grad():
            assert torch.allclose(hooked(m)(TOKENS), logits(m), atol=1e-5, rtol=1e-5), kw

    # the demo: d_vocab_out = p, no normalization, biases frozen at zero, split from torch.manual_seed(598)
    models = {99: model(6, biases=frozenset(), d_vocab_out=P), 199: model(7, biases=frozenset(), d_vocab_out=P)}
    htm = {epoch: hooked(m) for epoch, m in models.items()}
    order = torch.randperm(P * P, generator=torch.Generator().manual_seed(598))
    cut = int(P * P * 0.3)
    torch.save(
        {
            "model": htm[199].state_dict(),
            "config": htm[199].cfg,
            "checkpoints": [h.state_dict() for h in htm.values()],
            "checkpoint_epochs": list(htm),
            "test_losses": [1.0] * 200,
            "train_losses": [0.5] * 200,
            "train_indices": order[:cut],
            "test_indices": order[cut:],
        },
        tmp_path / "grokking_demo.pth",
    )
    out = tmp_path / "run"
    result = groklab_cli("import", "transformer-lens", str(tmp_path / "grokking_demo.pth"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "task.split=torch, data_seed=598" in result.stdout
    run = Run(out)
    assert run.steps == [99, 199] and run.config.model.params()["outputs"] == "answers"
    assert run.config.model.params()["biases"] == [] and run.config.task.params()["split"] == "torch"
    for epoch, m in models.items():
        assert torch.equal(logits(run.model(epoch)), logits(m))
    assert groklab_cli("measure", str(out)).returncode == 0
    assert groklab_cli("report", str(out)).returncode == 0

    # the same file with a split groklab cannot rebuild
    torch.save(
        {
            "model": htm[199].state_dict(),
            "config": htm[199].cfg,
            "train_indices": torch.arange(cut),
            "test_indices": torch.arange(cut, P * P),
        },
        tmp_path / "odd_split.pth",
    )
    refused(
        tmp_path,
        ["import", "transformer-lens", str(tmp_path / "odd_split.pth"), "--out", str(tmp_path / "x")],
        "none groklab can rebuild",
    )


# -- malformed input -------------------------------------------------------------------------------------------
def test_malformed_files_are_one_line_exit_2_and_leave_nothing(tmp_path):
    m = model(0)
    good = to_nanda(m)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({k: v for k, v in good.items() if k != "blocks.0.attn.W_K"}, tmp_path / "missing.pth")
    torch.save({**good, "blocks.0.attn.W_O": good["blocks.0.attn.W_O"][:, :8].contiguous()}, tmp_path / "shape.pth")
    torch.save({**good, "blocks.0.ln1.w_ln": torch.ones(16)}, tmp_path / "ln.pth")
    torch.save({"optimizer": {}}, tmp_path / "no_model.pth")
    with open(tmp_path / "cut.pth", "wb") as f:
        buf = io.BytesIO()
        torch.save(good, buf)
        f.write(buf.getvalue()[:2000])
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    torch.save(good, tmp_path / "good.pth")
    out = str(tmp_path / "run")
    nanda = ["import", "nanda"]
    refused(tmp_path, [*nanda, str(tmp_path / "notes.pth"), "--out", out], "is not a PyTorch checkpoint")
    refused(tmp_path, [*nanda, str(tmp_path / "cut.pth"), "--out", out], "is not a PyTorch checkpoint")
    refused(tmp_path, [*nanda, str(tmp_path / "list.pth"), "--out", out], "holds a list")
    refused(tmp_path, [*nanda, str(tmp_path / "missing.pth"), "--out", out], "has no weight 'blocks.0.attn.W_K'")
    refused(tmp_path, [*nanda, str(tmp_path / "shape.pth"), "--out", out], "'blocks.0.attn.W_O' has shape (16, 8)")
    refused(tmp_path, [*nanda, str(tmp_path / "ln.pth"), "--out", out], "blocks.0.ln1.w_ln")
    refused(tmp_path, [*nanda, str(tmp_path / "no_model.pth"), "--out", out], "has no 'model'")
    refused(tmp_path, [*nanda, str(tmp_path / "absent.pth"), "--out", out], "no such file")
    refused(tmp_path, ["import", "keras", str(tmp_path / "good.pth"), "--out", out], "No such command 'keras'")
    refused(
        tmp_path, ["import", "transformer-lens", str(tmp_path / "good.pth"), "--out", out], "use `groklab import nanda`"
    )
    refused(tmp_path, [*nanda, str(tmp_path / "good.pth"), "--out", str(tmp_path / "existing")], "already exists")
    assert (tmp_path / "existing" / "keep.txt").read_text() == "mine"
    torch.save(
        {
            **good,
            "blocks.0.attn.W_O": good["blocks.0.attn.W_O"].T.reshape(2, 8, 16).contiguous(),
            "blocks.0.attn.b_Q": torch.zeros(2, 8),
        },
        tmp_path / "tl.pth",
    )
    refused(tmp_path, [*nanda, str(tmp_path / "tl.pth"), "--out", out], "use `groklab import transformer-lens`")
    refused(
        tmp_path,
        ["import", "transformer-lens", str(tmp_path / "tl.pth"), "--out", out, "--task", "add"],
        "holds no TransformerLens config",
    )

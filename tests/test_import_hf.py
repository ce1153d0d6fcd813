"""`groklab import hf`: Hugging Face checkpoint series (a BERT in per-seed Trainer directories, a GPT-NeoX in a
hub cache with one revision per step) as sweeps; their weight statistics against a computation written here
from the saved tensors; the cache of statistics; `--eval-text`; map / show / report / compare on the result;
malformed series refused in one line with nothing left behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")

from groklab.cli import main  # noqa: E402
from groklab.store import SweepDir  # noqa: E402
from groklab.store.importers import hf  # noqa: E402

SEEDS, VOCAB = (0, 1, 2), 50
BERT_STEPS, NEOX_STEPS = (0, 1, 2, 3, 4, 5), (0, 2, 4, 6)
WORDS = [f"w{i}" for i in range(VOCAB - 5)]
TEXT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(600))


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _bert_config():
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip


def _neox_config():
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip


def _train(model, seed: int, steps, save) -> None:
    """A few AdamW steps on random tokens; `save(model, step)` at each of `steps`."""
    generator = torch.Generator().manual_seed(100 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for step in range(max(steps) + 1):
        if step in steps:
            save(model, step)
        ids = torch.randint(5, VOCAB, (4, 8), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def bert_series(tmp_path_factory) -> Path:
    """SERIES/seed_N/checkpoint-STEP/ as a Trainer writes them (safetensors, trainer_state.json with losses
    logged every step and evaluated every 2nd), the tokenizer in each."""
    root = tmp_path_factory.mktemp("bert") / "multiberts-tiny"
    tokenizer = _tokenizer()
    for seed in SEEDS:
        torch.manual_seed(seed)
        history = []

        def save(model, step, seed=seed, history=history):
            out = root / f"seed_{seed}" / f"checkpoint-{step}"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            history += [{"step": step, "loss": 4.0 - 0.1 * step - 0.01 * seed, "learning_rate": 0.03, "epoch": 0.1}]
            if step % 2 == 0:
                history.append({"step": step, "eval_loss": 4.5 - 0.2 * step + 0.05 * seed, "eval_runtime": 1.0})
            (out / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))

        _train(transformers.BertForMaskedLM(_bert_config()), seed, BERT_STEPS, save)
    return root


def _cache_file(repo: Path, commit: str, name: str, data: bytes) -> None:
    """A file of a snapshot as huggingface_hub stores it: the content in blobs/, a relative link in the snapshot."""
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../..") / "blobs" / blob.name)


@pytest.fixture(scope="module")
def neox_cache(tmp_path_factory) -> Path:
    """A hub cache HUB/models--tiny--neox-seedN/ with refs/stepK -> snapshots/COMMIT/ (Pythia's revisions);
    seed 1's weights as pytorch_model.bin, the others' as model.safetensors."""
    hub = tmp_path_factory.mktemp("hf-home") / "hub"
    staging = tmp_path_factory.mktemp("neox-staging")
    tokenizer = _tokenizer()
    for seed in SEEDS:
        torch.manual_seed(seed)
        repo = hub / f"models--tiny--neox-seed{seed}"

        def save(model, step, seed=seed, repo=repo):
            out = staging / f"{seed}-{step}"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            if seed == 1:
                (out / "model.safetensors").unlink()
                torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "pytorch_model.bin")
            commit = hashlib.sha1(f"{seed}-{step}".encode()).hexdigest()
            for path in sorted(out.iterdir()):
                _cache_file(repo, commit, path.name, path.read_bytes())
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / f"step{step}").write_text(commit)

        _train(transformers.GPTNeoXForCausalLM(_neox_config()), seed, NEOX_STEPS, save)
    return hub


def _cli(*argv) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


# -- the statistics, computed here without groklab -----------------------------------------------------------


def _load(path: Path) -> dict[str, np.ndarray]:
    if (path / "model.safetensors").exists():
        from safetensors.numpy import load_file

        return {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    return {k: v.double().numpy() for k, v in state.items()}


def _expected(path: Path, arch: str) -> dict[str, float]:
    """Hu et al.'s 14 statistics (their src/metrics.py `get_metrics_hf_transformer`): per layer the full Q, K, V,
    attention output, intermediate and output matrices; means over matrices; weights and MLP biases pooled."""
    state = _load(path)
    matrices, weights, biases = [], [], []
    for layer in range(2):
        if arch == "bert":
            p = f"bert.encoder.layer.{layer}."
            names = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
            names += ["intermediate.dense", "output.dense"]
            layer_weights = [state[p + n + ".weight"] for n in names]
            matrices += layer_weights
            biases += [state[p + "intermediate.dense.bias"], state[p + "output.dense.bias"]]
        else:
            p = f"gpt_neox.layers.{layer}."
            qkv = state[p + "attention.query_key_value.weight"]  # rows: per head [q (8), k (8), v (8)]
            heads = qkv.reshape(4, 3, 8, 32)
            matrices += [heads[:, j].reshape(32, 32) for j in range(3)]
            rest = [
                state[p + n] for n in ("attention.dense.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
            ]
            matrices += rest
            layer_weights = [qkv, *rest]
            biases += [state[p + "mlp.dense_h_to_4h.bias"], state[p + "mlp.dense_4h_to_h.bias"]]
        weights += layer_weights
    per = []
    for W in matrices:
        sv = np.linalg.svd(W, compute_uv=False)
        sv[sv < 1e-5] = 0
        l1, l2, trace = np.abs(W).sum(), np.sqrt((W**2).sum()), np.trace(W)
        per.append([l1, l2, trace, sv.max(), l1 / l2, trace / sv.max(), sv.mean(), sv.var(ddof=1)])
    keys = (
        "l1",
        "l2",
        "trace",
        "spectral",
        "code_sparsity",
        "computational_sparsity",
        "mean_lambda",
        "variance_lambda",
    )
    out = dict(zip(keys, np.mean(per, axis=0)))
    for suffix, arrays in (("w", weights), ("b", biases)):
        x = np.sort(np.concatenate([a.ravel() for a in arrays]))
        out[f"mean_{suffix}"], out[f"median_{suffix}"], out[f"var_{suffix}"] = (
            x.mean(),
            x[(len(x) - 1) // 2],
            x.var(ddof=1),
        )
    return out


def _check_stats(sweep: Path, paths: dict[tuple[int, int], Path], arch: str) -> None:
    for (seed, step), path in paths.items():
        row = (
            pd.read_json(sweep / "runs" / f"seed_{seed:04d}" / "metrics.jsonl", lines=True).set_index("step").loc[step]
        )
        for key, want in _expected(path, arch).items():
            assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-12), (seed, step, key)


# -- importing -----------------------------------------------------------------------------------------------


def test_trainer_dirs_import_as_a_sweep(bert_series, tmp_path):
    out = tmp_path / "sweep"
    assert _cli("import", "hf", bert_series, "--out", out) == 0
    sweep = SweepDir.open(out)
    assert sweep.seeds == list(SEEDS) and sweep.imported["model_type"] == "bert" and sweep.covariance == "diag"
    assert sweep.metric == "test_loss" and sweep.threshold is None
    paths = {(s, t): bert_series / f"seed_{s}" / f"checkpoint-{t}" for s in SEEDS for t in BERT_STEPS}
    _check_stats(out, paths, "bert")
    m = pd.read_json(out / "runs" / "seed_0001" / "metrics.jsonl", lines=True)
    assert list(m["step"]) == list(BERT_STEPS)
    assert m["train_loss"].tolist() == pytest.approx([4.0 - 0.1 * s - 0.01 for s in BERT_STEPS])
    # evaluated at steps 0, 2, 4 only: the checkpoints between have none
    assert m["test_loss"].tolist()[::2] == pytest.approx([4.5 - 0.2 * s + 0.05 for s in (0, 2, 4)])
    assert m["test_loss"].isna().tolist() == [False, True, False, True, False, True]
    assert "test_runtime" not in m and m["lr"].eq(0.03).all()


def test_hub_cache_of_revisions_imports(neox_cache, tmp_path):
    out = tmp_path / "neox"
    assert _cli("import", "hf", neox_cache, "--out", out) == 0
    sweep = SweepDir.open(out)
    assert sweep.seeds == list(SEEDS) and sweep.imported["layout"] == "cache" and sweep.metric is None
    commit = lambda s, t: (neox_cache / f"models--tiny--neox-seed{s}" / "refs" / f"step{t}").read_text()  # noqa: E731
    paths = {
        (s, t): neox_cache / f"models--tiny--neox-seed{s}" / "snapshots" / commit(s, t)
        for s in SEEDS
        for t in NEOX_STEPS
    }
    _check_stats(out, paths, "neox")  # seed 1 from pytorch_model.bin, the others from safetensors
    # one repo of the cache given on its own, and the seed and step read by --pattern
    one = tmp_path / "one"
    repo = neox_cache / "models--tiny--neox-seed2"
    assert _cli("import", "hf", repo, "--out", one, "--pattern", r"neox-seed(?P<seed>\d)@step(?P<step>\d+)$") == 0
    assert SweepDir.open(one).seeds == [2]
    assert pd.read_json(one / "runs" / "seed_0002" / "metrics.jsonl", lines=True)["step"].tolist() == list(NEOX_STEPS)


def test_statistics_are_cached_and_reused(bert_series, tmp_path, monkeypatch):
    series = tmp_path / "series"
    shutil.copytree(bert_series, series)
    out = tmp_path / "sweep"
    hf.import_hf(series, out)
    before = (out / "runs" / "seed_0000" / "metrics.jsonl").read_text()
    computed = []
    real = hf.checkpoint_statistics
    monkeypatch.setattr(
        hf, "checkpoint_statistics", lambda reader, config: computed.append(reader) or real(reader, config)
    )
    hf.import_hf(series, out)  # again: nothing computed
    assert computed == [] and (out / "runs" / "seed_0000" / "metrics.jsonl").read_text() == before
    for seed in SEEDS:  # a new checkpoint in every run: only those are read
        shutil.copytree(series / f"seed_{seed}" / "checkpoint-5", series / f"seed_{seed}" / "checkpoint-6")
    hf.import_hf(series, out)
    assert sorted(r.checkpoint.step for r in computed) == [6, 6, 6]
    assert pd.read_json(out / "runs" / "seed_0000" / "metrics.jsonl", lines=True)["step"].max() == 6


def test_eval_text_adds_a_held_out_loss(neox_cache, bert_series, tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    out, repo = tmp_path / "neox", neox_cache / "models--tiny--neox-seed0"
    assert _cli("import", "hf", repo, "--out", out, "--eval-text", text, "--eval-tokens", 256) == 0
    assert SweepDir.open(out).metric == "text_loss"
    m = pd.read_json(out / "runs" / "seed_0000" / "metrics.jsonl", lines=True)
    assert m["text_loss"].notna().all() and (m["text_loss"] > 0).all()
    # the next-token loss as transformers computes it, on the same 256 tokens in blocks of 64
    snapshot = repo / "snapshots" / (repo / "refs" / f"step{NEOX_STEPS[-1]}").read_text()
    model = transformers.AutoModelForCausalLM.from_pretrained(snapshot).eval()
    ids = torch.tensor(_tokenizer()(TEXT, add_special_tokens=False)["input_ids"][:256]).view(4, 64)
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()
    assert m["text_loss"].iloc[-1] == pytest.approx(want, rel=1e-5)
    # BERT (one run of the series, chosen by --pattern): a masked-LM loss; the trainer's eval loss stays the
    # convergence metric
    out = tmp_path / "bert"
    hf.import_hf(
        bert_series, out, pattern=r"seed_(?P<seed>2)/checkpoint-(?P<step>\d+)", eval_text=text, eval_tokens=200
    )
    m = pd.read_json(out / "runs" / "seed_0002" / "metrics.jsonl", lines=True)
    assert m["text_loss"].notna().all() and SweepDir.open(out).metric == "test_loss"


def test_map_show_report_compare_on_imported_sweeps(bert_series, neox_cache, tmp_path, capsys):
    bert, neox = tmp_path / "bert", tmp_path / "neox"
    hf.import_hf(bert_series, bert)
    hf.import_hf(neox_cache, neox)
    assert _cli("map", bert, "--jobs", "1", "--restarts", "1") == 0
    out = capsys.readouterr().out
    assert "converged (test_loss <= " in out  # derived threshold: the worst run's final eval loss
    model = json.loads((bert / "map" / "training_map.json").read_text())
    assert model["params"]["covariance_type"] == "diag"
    assert _cli("map", neox, "--jobs", "1", "--restarts", "1", "--states", "2") == 0
    assert "no detour test" in capsys.readouterr().out and (neox / "map" / "report.html").is_file()
    assert _cli("show", bert) == 0
    out = capsys.readouterr().out
    assert "imported (hf)" in out and "converged (test loss <= " in out
    assert _cli("show", neox / "runs" / "seed_0001") == 0
    assert "gpt_neox checkpoints" in capsys.readouterr().out
    assert _cli("report", bert / "runs" / "seed_0000", "--png", tmp_path / "png") == 0
    assert (tmp_path / "png" / "weight_stats.png").is_file() and (tmp_path / "png" / "curves.png").is_file()
    shutil.rmtree(neox / "map")  # compare fits the map it lacks
    assert _cli("compare", bert, neox, "-o", tmp_path / "cmp.html") == 0
    assert (tmp_path / "cmp.html").is_file() and (neox / "map" / "states.csv").is_file()


# -- malformed series ------------------------------------------------------------------------------------------


def _refused(capsys, *argv, match: str) -> None:
    assert _cli(*argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error in one line
    assert [line for line in lines if line.startswith("groklab: error")] == lines[-1:] and match in lines[-1], lines


def test_malformed_series_are_refused_whole(bert_series, neox_cache, tmp_path, capsys):
    series, out = tmp_path / "series", tmp_path / "out"
    shutil.copytree(bert_series, series)
    shutil.rmtree(series / "seed_1" / "checkpoint-4")
    _refused(capsys, "import", "hf", series, "--out", out, match="seed 1 has no checkpoint at step 4")
    shutil.copytree(bert_series / "seed_1" / "checkpoint-4", series / "seed_1" / "checkpoint-4")
    weights = series / "seed_2" / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    _refused(capsys, "import", "hf", series, "--out", out, match="checkpoint-3: model.safetensors is corrupt")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # no half-made sweep
    shutil.copy(bert_series / "seed_2" / "checkpoint-3" / "model.safetensors", weights)
    repo, ckpt = neox_cache / "models--tiny--neox-seed0", series / "seed_0" / "checkpoint-5"
    ckpt.rename(tmp_path / "aside")
    shutil.copytree(repo / "snapshots" / (repo / "refs" / "step2").read_text(), ckpt)  # a GPT-NeoX among BERTs
    _refused(capsys, "import", "hf", series, "--out", out, match="mixed architectures")
    shutil.rmtree(ckpt)
    (tmp_path / "aside").rename(ckpt)
    # an earlier import is kept whole when a new one fails
    assert _cli("import", "hf", series, "--out", out) == 0
    (series / "seed_0" / "checkpoint-2" / "config.json").write_text("{not json")
    _refused(capsys, "import", "hf", series, "--out", out, match="config.json is corrupt")
    assert SweepDir.open(out).seeds == list(SEEDS) and len(list((out / "runs").iterdir())) == 3
    _refused(capsys, "import", "hf", tmp_path / "nowhere", "--out", tmp_path / "x", match="no directory")
    _refused(capsys, "import", "hf", series, "--out", tmp_path / "x", "--pattern", "(?P<seed>", match="--pattern")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (series / "seed_0" / "checkpoint-2" / "config.json").write_text(
        (series / "seed_1" / "checkpoint-2" / "config.json").read_text()
    )
    _refused(capsys, "import", "hf", series, "--out", tmp_path / "taken", match="not an earlier import")


def test_distribution_stats_match_concatenation():
    """mean / lower median / Bessel variance of tensors taken together, without concatenating them."""
    from groklab.measures.weight_stats import distribution_stats

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for trial in range(8):
            tensors = [
                (torch.randn(int(n), generator=g) * 3).round(decimals=trial % 3).to(dtype) for n in (7, 0, 30, 12)
            ]
            tensors += [torch.zeros(3, dtype=dtype), -torch.zeros(2, dtype=dtype)] if trial % 2 else []
            flat = torch.cat([t.double() for t in tensors])
            got = distribution_stats(lambda tensors=tensors: iter(tensors))
            assert got["median"] == flat.median().item()
            assert got["mean"] == pytest.approx(flat.mean().item(), abs=1e-14)
            assert got["var"] == pytest.approx(flat.var().item(), rel=1e-12)
    nan = distribution_stats(lambda: iter([torch.tensor([1.0, float("nan")])]))
    assert all(v != v for v in nan.values())

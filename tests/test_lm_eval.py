"""Evaluation of causal LMs on the structural-grokking tasks (spec structural-grokking.md §2, §5.1-5.3, §6):
Dyck closing-bracket accuracy, QF / tense accuracies, greedy decoding, weight norm, attention entropy.
Hand-written "oracle" logits functions know the answer; the released samples are read from ../shared/data."""

import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from groklab.measures.lm import attention_entropy, weight_norm
from groklab.models.transformer import Transformer, TransformerConfig
from groklab.tasks import dyck, mccoy
from groklab.tasks.lm_eval import (
    EOS,
    PAD,
    SOS,
    dyck_accuracies,
    dyck_closing_accuracy,
    dyck_closing_scores,
    encode,
    greedy_decode,
    lm_vocabulary,
    main_verb_correct,
    model_logits_fn,
    pad_batch,
    qf_accuracies,
    qf_aux_rank_accuracy,
    qf_exact_match_accuracy,
    qf_first_word_accuracy,
    tense_main_verb_accuracy,
)

DATA = SHARED_DATA
DYCK_VAL = DATA / "dyck" / "k-20_d-10_val.txt"
MCCOY = DATA / "mccoy"
DYCK_VOCAB = lm_vocabulary(dyck.vocabulary(20))
QF_VOCAB = lm_vocabulary(mccoy.vocabulary("question"))
TENSE_VOCAB = lm_vocabulary(mccoy.vocabulary("tense"))


@pytest.fixture(scope="module")
def dyck_strings():
    return dyck.load(DYCK_VAL)


@pytest.fixture(scope="module")
def qf_items():
    return mccoy.load(MCCOY / "question.val")


@pytest.fixture(scope="module")
def tense_items():
    return mccoy.load(MCCOY / "tense.val")


def tiny_transformer(d_vocab: int, n_ctx: int, seed: int = 0, **kw) -> Transformer:
    cfg = dict(
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_head=16,
        d_mlp=64,
        normalization="post",
        positional="sinusoidal",
    )
    return Transformer(TransformerConfig(**{**cfg, **kw}), seed=seed)


# ------------------------------------------------------------------------------------ vocabulary, encoding
def test_vocabulary_encode_and_pad():
    assert (len(DYCK_VOCAB), len(QF_VOCAB), len(TENSE_VOCAB)) == (43, 71, 101)  # spec §2
    assert QF_VOCAB[0] == PAD and QF_VOCAB[-2:] == (EOS, SOS) and list(QF_VOCAB[1:-2]) == sorted(QF_VOCAB[1:-2])
    ids = encode(QF_VOCAB, "the newt . quest")
    assert ids == [70] + [QF_VOCAB.index(w) for w in ("the", "newt", ".", "quest")]
    assert encode(QF_VOCAB, ("the",), sos=False, eos=True) == [QF_VOCAB.index("the"), 69]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode(QF_VOCAB, "the gryphon")
    with pytest.raises(ValueError):
        encode(("a", "b", "c"), "a")
    tokens, lengths = pad_batch([[5, 6, 7], [8]])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    assert pad_batch([[1, 2]], length=4)[0].tolist() == [[1, 2, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[1, 2, 3]], length=2)


# ------------------------------------------------------------------------------------ Dyck
def dyck_oracle(vocab, right):
    """A causal logits_fn over Dyck inputs: at each position it tracks the stack; if right(top type, distance)
    the largest closer logit is on the correct closer, else on the next type's closer. An opener gets an even
    larger logit everywhere (the metric must restrict to closers). distance: how far back the top's opener is
    from the token being predicted."""
    closers = [w for w in vocab if w.endswith(")")]
    idx = {w: i for i, w in enumerate(vocab)}

    def fn(tokens):
        rows, cols, ids = [], [], []
        for b, row in enumerate(tokens.tolist()):
            stack = []
            for t, tok in enumerate(row):
                w = vocab[tok]
                if w == PAD:
                    break
                if w.startswith("("):
                    stack.append((w[1:], t))
                elif w.endswith(")"):
                    stack.pop()
                if stack:
                    top, at = stack[-1]
                    good = f"{top})"
                    pick = good if right(top, t + 1 - at) else closers[(closers.index(good) + 1) % len(closers)]
                    rows.append(b), cols.append(t), ids.append(idx[pick])
        out = torch.zeros(*tokens.shape, len(vocab))
        out[..., idx["(a"]] = 5.0
        out[rows, cols, ids] = 1.0
        return out

    return fn


def test_dyck_oracle_anti_oracle_and_half(dyck_strings):
    strings = dyck_strings[:1500]
    assert dyck_closing_accuracy(dyck_oracle(DYCK_VOCAB, lambda top, d: True), DYCK_VOCAB, strings) == 1.0
    assert dyck_closing_accuracy(dyck_oracle(DYCK_VOCAB, lambda top, d: False), DYCK_VOCAB, strings) == 0.0
    # right only when the stack top is one of the types a..j: the expected fraction, counted independently
    half = dyck_oracle(DYCK_VOCAB, lambda top, d: top <= "j")
    n_first = n_all = 0
    for s in strings:
        tg = dyck.closing_targets(s)
        n_first += int((tg.is_close & (tg.closer < 10)).sum())
        n_all += int(tg.is_close.sum())
    assert 0.3 < n_first / n_all < 0.7
    assert dyck_closing_accuracy(half, DYCK_VOCAB, strings, batch_size=37) == n_first / n_all
    # file lines with END are accepted as well
    lines = [dyck.format_line(s) for s in strings[:50]]
    assert dyck_closing_accuracy(half, DYCK_VOCAB, lines) == dyck_closing_accuracy(half, DYCK_VOCAB, strings[:50])


def test_dyck_distance_filter_and_prefix_selection_on_the_sample(dyck_strings):
    near_only = dyck_oracle(DYCK_VOCAB, lambda top, d: d < 10)  # right exactly on the closers the paper drops
    far = dyck_closing_scores(near_only, DYCK_VOCAB, dyck_strings, min_distance=10, batch_size=256)
    assert len(far.correct) == 9464 and not far.correct.any() and (far.distance >= 10).all()  # spec §1.3
    acc = dyck_accuracies(near_only, DYCK_VOCAB, dyck_strings, batch_size=256)
    assert acc == {"dyck_acc_all": (132673 - 9464) / 132673, "dyck_acc_far10": 0.0}
    # the released code's selection: whole strings in file order until >= 5000 prefixes
    sel = dyck_closing_scores(near_only, DYCK_VOCAB, dyck_strings, max_prefixes=5000)
    assert len(sel.correct) == 5008 and len(set(sel.string.tolist())) == 784 and sel.string.max() == 783
    assert sel.correct.mean() == dyck_closing_accuracy(near_only, DYCK_VOCAB, dyck_strings[:784])


def test_dyck_one_pass_equals_one_prefix_at_a_time(dyck_strings):
    strings = dyck_strings[:100]
    model = tiny_transformer(len(DYCK_VOCAB), 80, seed=3).double()
    logits_fn = model_logits_fn(model)
    fast = dyck_closing_scores(logits_fn, DYCK_VOCAB, strings, batch_size=16)
    closers = [i for i, w in enumerate(DYCK_VOCAB) if w.endswith(")")]
    slow = []
    with torch.no_grad():
        for i, s in enumerate(strings):
            for t in np.flatnonzero(dyck.closing_targets(s).is_close):
                logits = model(torch.tensor([encode(DYCK_VOCAB, s[:t])]))[0, -1]  # (vocab,) after [SOS] + w<t
                slow.append((i, int(t), closers[int(logits[closers].argmax())] == DYCK_VOCAB.index(s[t])))
    assert [(int(i), int(t)) for i, t in zip(fast.string, fast.position)] == [(i, t) for i, t, _ in slow]
    assert fast.correct.tolist() == [c for _, _, c in slow]
    assert 0 < fast.correct.mean() < 1  # a random model: the comparison is not vacuous
    assert dyck_closing_accuracy(logits_fn, DYCK_VOCAB, strings, min_distance=3) == np.mean(
        [c for (_, _, c), d in zip(slow, fast.distance) if d >= 3]
    )


# ------------------------------------------------------------------------------------ question formation, tense
def item_oracle(vocab, items, answer):
    """A causal logits_fn that, after the marker of an item's source, writes answer(item) + EOS: the logit at
    position t >= m (m: the marker's position) is largest on the (t - m)-th continuation token. It only reads
    tokens up to the marker, so it is causal."""
    idx = {w: i for i, w in enumerate(vocab)}
    markers = {idx[w] for m in mccoy.MARKERS.values() for w in m if w in idx}
    table = {tuple(idx[w] for w in it.source): [idx[w] for w in answer(it)] + [len(vocab) - 2] for it in items}

    def fn(tokens):
        out = torch.zeros(*tokens.shape, len(vocab))
        out[..., idx["the"]] = 0.5  # some other token everywhere else
        for b, row in enumerate(tokens.tolist()):
            m = next((t for t, x in enumerate(row) if x in markers), None)
            if m is None:
                continue
            cont = table[tuple(row[1 : m + 1])]
            for t in range(m, min(m + len(cont), len(row))):
                out[b, t, cont[t - m]] = 1.0
        return out

    return fn


def negate_first(it):
    return (mccoy.NEGATE[it.target[0]], *it.target[1:]) if it.marker == "quest" else it.target


def test_qf_oracle_anti_oracle_and_half(qf_items):
    quest = [it for it in qf_items if it.marker == "quest"]
    assert len(quest) == 406
    oracle = item_oracle(QF_VOCAB, qf_items, lambda it: it.target)
    anti = item_oracle(QF_VOCAB, qf_items, negate_first)
    for fn, want in ((oracle, 1.0), (anti, 0.0)):
        assert qf_aux_rank_accuracy(fn, QF_VOCAB, qf_items) == want
        assert qf_first_word_accuracy(fn, QF_VOCAB, qf_items) == want
        assert qf_exact_match_accuracy(fn, QF_VOCAB, qf_items) == want
        assert qf_accuracies(fn, QF_VOCAB, qf_items) == {
            "qf_aux_rank_acc": want,
            "qf_first_word_greedy_acc": want,
            "qf_exact_match": want,
        }
    # decl items are copies: the oracle gets them right, the anti-oracle leaves them alone
    assert qf_first_word_accuracy(anti, QF_VOCAB, qf_items, quest_only=False) == 594 / 1000
    # first word right, the rest wrong (the final "?" dropped): only exact match fails
    no_mark = item_oracle(QF_VOCAB, qf_items, lambda it: it.target[:-1])
    assert qf_first_word_accuracy(no_mark, QF_VOCAB, qf_items) == 1.0
    assert qf_exact_match_accuracy(no_mark, QF_VOCAB, qf_items) == 0.0
    # right exactly on the items whose sentence starts with the / some / my
    first = ("the", "some", "my")
    half = item_oracle(QF_VOCAB, qf_items, lambda it: it.target if it.source[0] in first else negate_first(it))
    want = sum(it.source[0] in first for it in quest) / 406
    assert 0.3 < want < 0.7
    assert qf_aux_rank_accuracy(half, QF_VOCAB, qf_items) == want
    assert qf_first_word_accuracy(half, QF_VOCAB, qf_items, batch_size=17) == want
    # a fixed seeded subset
    keep = np.sort(np.random.default_rng(5).choice(406, 100, replace=False))
    want_sub = np.mean([quest[i].source[0] in first for i in keep])
    assert qf_exact_match_accuracy(half, QF_VOCAB, qf_items, max_items=100, seed=5) == want_sub
    assert qf_aux_rank_accuracy(half, QF_VOCAB, qf_items, max_items=100, seed=5) == want_sub
    assert math.isnan(qf_aux_rank_accuracy(oracle, QF_VOCAB, [it for it in qf_items if it.marker == "decl"]))


def swap_verbs(words):
    """Every verb replaced by a different verb: POS sequence kept, main verb changed."""
    return tuple(("giggled" if w != "giggled" else "smiled") if mccoy.POS.get(w) == "V" else w for w in words)


def test_tense_oracle_anti_oracle_and_half(tense_items):
    table = mccoy.load_pos(MCCOY / "pos_tense.txt")
    oracle = item_oracle(TENSE_VOCAB, tense_items, lambda it: it.target)
    no_dot = item_oracle(TENSE_VOCAB, tense_items, lambda it: it.target[:-1])  # the released rule loses a word
    anti = item_oracle(TENSE_VOCAB, tense_items, lambda it: swap_verbs(it.target))
    short = item_oracle(TENSE_VOCAB, tense_items, lambda it: it.target[1:])  # POS sequence differs
    assert tense_main_verb_accuracy(no_dot, TENSE_VOCAB, tense_items, table, end="final_period") == 1.0
    for fn, want in ((oracle, 1.0), (no_dot, 0.0), (anti, 0.0), (short, 0.0)):
        assert tense_main_verb_accuracy(fn, TENSE_VOCAB, tense_items, table) == want
    # right exactly on the PRESENT items: 442 of 1000
    half = item_oracle(
        TENSE_VOCAB, tense_items, lambda it: it.target if it.marker == "PRESENT" else swap_verbs(it.target)
    )
    assert tense_main_verb_accuracy(half, TENSE_VOCAB, tense_items, table, batch_size=50) == 442 / 1000
    assert tense_main_verb_accuracy(half, TENSE_VOCAB, tense_items) == 442 / 1000  # built-in table
    keep = np.sort(np.random.default_rng(2).choice(1000, 200, replace=False))
    assert tense_main_verb_accuracy(half, TENSE_VOCAB, tense_items, table, max_items=200, seed=2) == np.mean(
        [tense_items[i].marker == "PRESENT" for i in keep]
    )


def test_main_verb_with_a_pos_table_agrees_with_mccoy(tense_items):
    table = mccoy.load_pos(MCCOY / "pos_tense.txt")
    n_true = 0
    for it in tense_items[:300]:
        for pred in (
            it.target,
            it.target[:-1],
            swap_verbs(it.target),
            it.target[1:],
            it.source[:-1],
            ("<sos>",) + it.target[1:],
        ):
            got = main_verb_correct(pred, it.target, table)
            assert got == mccoy.main_verb_correct(pred, it.target)
            n_true += got
    assert 0 < n_true < 1800


# ------------------------------------------------------------------------------------ greedy decoding
def reference_decode(model, vocab, prefix, max_new):
    seq = encode(vocab, prefix)
    new = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            if nxt == len(vocab) - 2:
                break
            seq.append(nxt)
            new.append(vocab[nxt])
    return tuple(new)


def test_greedy_decode_batch_equals_one_at_a_time(qf_items):
    prefixes = [it.source for it in qf_items[:40:3]] + [("the",), ("the", "newt", "who")]
    assert len({len(p) for p in prefixes}) >= 5
    model = tiny_transformer(len(QF_VOCAB), 64, seed=0, init="pytorch").double()  # decodes of different lengths
    fn = model_logits_fn(model)
    assert callable(fn.new_cache)  # the Transformer's KV cache is used
    batched = greedy_decode(fn, QF_VOCAB, prefixes, max_new=12, batch_size=6)
    uncached = greedy_decode(lambda tokens: fn(tokens), QF_VOCAB, prefixes, max_new=12, batch_size=6)
    alone = [reference_decode(model, QF_VOCAB, p, 12) for p in prefixes]
    assert batched == alone and uncached == alone
    assert greedy_decode(fn, QF_VOCAB, prefixes, max_new=3, batch_size=4) == [a[:3] for a in alone]
    assert len(set(batched)) > 3 and len({len(x) for x in batched}) > 1  # not a vacuous comparison
    assert all(EOS not in x for x in batched)


def test_kv_cache_pieces_equal_the_whole_forward():
    model = tiny_transformer(len(QF_VOCAB), 64, seed=1, dropout=0.1).double().eval()
    tokens = torch.randint(1, len(QF_VOCAB), (5, 17), generator=torch.Generator().manual_seed(0))
    whole = model(tokens)
    cache = model.new_cache()
    pieces = [model(tokens[:, a:b], cache=cache) for a, b in ((0, 6), (6, 7), (7, 15), (15, 17))]
    assert cache.length == 17
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-10)
    cache = model.new_cache()
    model(tokens[:, :9], cache=cache)
    cache.keep(torch.tensor([3, 0]))  # rows leave the batch
    assert torch.allclose(model(tokens[[3, 0], 9:], cache=cache), whole[[3, 0], 9:], atol=1e-10)


def test_greedy_decode_stops_at_eos_and_max_new():
    vocab = lm_vocabulary(["a", "b", "c"])  # ids: pad 0, a 1, b 2, c 3, eos 4, sos 5

    def count_fn(tokens):  # after n real words, predict "a" if n < 3 else EOS; ignores padding
        out = torch.zeros(*tokens.shape, len(vocab))
        n = torch.arange(tokens.shape[1]).expand(tokens.shape)  # words seen at position t: t
        out[..., 1] = (n < 3).double()
        out[..., 4] = (n >= 3).double()
        return out

    got = greedy_decode(count_fn, vocab, [(), ("b",), ("b", "c"), ("b", "c", "b", "c")], max_new=50, batch_size=4)
    assert got == [("a", "a", "a"), ("a", "a"), ("a",), ()]
    assert greedy_decode(count_fn, vocab, [()], max_new=2) == [("a", "a")]


# ------------------------------------------------------------------------------------ weight norm
def test_weight_norm_by_hand():
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [2.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.0, 4.0]))
    lin.register_buffer("running_scale", torch.tensor([100.0]))  # a (persistent) buffer is not a weight
    assert weight_norm(lin, n_layers=2) == {"weight_norm": 5.0, "weight_norm_per_layer": 2.5}
    model = tiny_transformer(20, 16)
    by_hand = math.sqrt(sum((p.detach().numpy().astype(np.float64) ** 2).sum() for _, p in model.named_parameters()))
    got = weight_norm(model)
    assert got["weight_norm"] == pytest.approx(by_hand, rel=1e-12)
    assert got["weight_norm_per_layer"] == pytest.approx(by_hand / 2, rel=1e-12)
    with_buffers = math.sqrt(by_hand**2 + float(model.pos_embed.W_pos.double().pow(2).sum()))
    assert got["weight_norm"] < with_buffers - 1  # the sinusoidal buffer is left out


# ------------------------------------------------------------------------------------ attention entropy
def test_uniform_attention_entropy_is_mean_log_k_plus_one():
    model = tiny_transformer(12, 20).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()  # all scores 0: query k attends uniformly to keys 0..k
    lengths = [5, 9, 3, 1]
    rng = np.random.default_rng(0)
    tokens, _ = pad_batch([[11] + rng.integers(1, 10, n - 1).tolist() for n in lengths], length=14)
    got = attention_entropy(model, tokens, lengths)
    logs = [np.log(np.arange(1, n + 1)) for n in lengths]
    assert got["attention_entropy"] == pytest.approx(np.concatenate(logs).mean(), rel=1e-12)
    assert got["attention_sparsity"] == -got["attention_entropy"]
    assert got["attention_entropy_legacy"] == pytest.approx(np.mean([x.sum() for x in logs]), rel=1e-12)


def test_attention_entropy_ignores_padding_and_uses_eval_mode():
    model = tiny_transformer(12, 24, seed=4, dropout=0.3).double()
    rng = np.random.default_rng(1)
    lengths = [7, 3, 10, 5, 1]
    seqs = [[11] + rng.integers(1, 10, n - 1).tolist() for n in lengths]
    tight, _ = pad_batch(seqs)
    junk, _ = pad_batch(seqs, length=20)
    for i, n in enumerate(lengths):  # pads replaced by arbitrary tokens: still not queries, never keys of real ones
        junk[i, n:] = torch.as_tensor(rng.integers(1, 12, 20 - n))
    model.train()
    a = attention_entropy(model, tight, lengths, batch_size=2)
    b = attention_entropy(model, junk, lengths)
    assert model.training  # the mode is restored
    alone = [attention_entropy(model, torch.tensor([s]), [len(s)]) for s in seqs]
    flat = sum(x["attention_entropy"] * n for x, n in zip(alone, lengths)) / sum(lengths)
    legacy = np.mean([x["attention_entropy_legacy"] for x in alone])
    for got in (a, b):
        assert got["attention_entropy"] == pytest.approx(flat, rel=1e-10)
        assert got["attention_entropy_legacy"] == pytest.approx(legacy, rel=1e-10)
    assert 0 < a["attention_entropy"] < np.log(np.arange(1, 11)).mean() * 1.5


def test_attention_entropy_matches_a_loop_over_the_cached_patterns():
    model = tiny_transformer(12, 24, seed=5, init="pytorch", init_scale=3.0)  # heads that differ: H(mean) > mean H
    rng = np.random.default_rng(2)
    lengths = [6, 2, 9]
    seqs = [[11] + rng.integers(1, 10, n - 1).tolist() for n in lengths]
    got = attention_entropy(model, pad_batch(seqs)[0], lengths)
    ent = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    per_head, legacy, heads_mean = [], [], []
    for s in seqs:
        _, cache = model.run_with_cache(torch.tensor([s]))
        total = total_heads = 0.0
        for layer in range(2):
            a = cache[f"blocks.{layer}.attn.hook_pattern"][0].double().numpy()  # (head, query, key)
            for k in range(len(s)):
                hs = [ent(a[h, k, : k + 1]) for h in range(2)]
                per_head += hs
                total += ent(a[:, k, : k + 1].mean(0))
                total_heads += np.mean(hs)
        legacy.append(total / 2)
        heads_mean.append(total_heads / 2)
    assert got["attention_entropy"] == pytest.approx(np.mean(per_head), rel=1e-6)
    assert got["attention_entropy_legacy"] == pytest.approx(np.mean(legacy), rel=1e-6)
    assert got["attention_entropy_legacy"] > np.mean(heads_mean) * 1.01  # the head-mean distribution, not mean entropy

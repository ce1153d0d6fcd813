"""Tree projections (Murty et al. 2023 §4; spec structural-grokking.md §5.4, §6 #9, #10, #17, #18): the
transformer's key mask, batched span scores against a one-span-at-a-time reference, a planted encoder whose
tree is known, greedy / exact-DP parsing, the seeded t_score estimator, PARSEVAL and its baselines."""

import math
import random

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from groklab.config import TaskConfig
from groklab.errors import ConfigError
from groklab.measures import MEASURES
from groklab.measures import tree_projection as tp
from groklab.models import Transformer, TransformerConfig
from groklab.tasks import build_task, mccoy

MCCOY = SHARED_DATA / "mccoy"
SOS = 11


def tiny_lm(normalization="post", seed=0, d_vocab=12, n_ctx=12) -> Transformer:
    """The structural presets' model family (post-LN, sinusoidal, dropout, xavier), tiny."""
    cfg = TransformerConfig(
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        normalization=normalization,
        positional="sinusoidal",
        dropout=0.1,
        init="xavier",
        embed_scale=True,
        biases=frozenset({"mlp", "unembed"}),
    )
    return Transformer(cfg, seed=seed)


def sentences(n_words, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[SOS, *torch.randint(1, SOS, (n,), generator=g).tolist()] for n in n_words]


# ---------------------------------------------------------------- the transformer's key mask
def test_key_mask_blocks_exactly_the_keys_it_names():
    model = tiny_lm().eval()
    x = torch.tensor(sentences([9, 9, 9], seed=1))  # (3, 10): few rows, the plain path
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(model(x, key_mask=torch.zeros_like(x, dtype=torch.bool)), plain)  # all allowed
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, 4] = True  # key 4 blocked for every query
        out = model(x, key_mask=mask)
        assert torch.equal(out[:, :4], plain[:, :4])  # queries before it never saw it
        assert not torch.allclose(out[:, 4:], plain[:, 4:])  # the others do not see it
        full = mask[:, None].expand(-1, 10, -1).clone()  # (batch, pos_q, pos_k) form
        assert torch.equal(model(x, key_mask=full), out)
        full[:, :6] = False  # only queries 6.. lose key 4
        per_query = model(x, key_mask=full)
        assert torch.equal(per_query[:, :6], plain[:, :6]) and not torch.allclose(per_query[:, 6:], plain[:, 6:])
        assert torch.allclose(model(x, at=6, key_mask=mask), out[:, 6], atol=1e-5)  # with `at`
        # a big batch of short rows would take the table path; the mask forces the plain one
        many = torch.tensor(sentences([4] * 40, seed=2))
        assert torch.allclose(model(many, key_mask=torch.zeros_like(many, dtype=torch.bool)), model(many), atol=1e-5)


# ---------------------------------------------------------------- span scores
def _hidden(model, x, key_mask=None):
    name = (
        "ln_final.hook_normalized"
        if model.cfg.normalization == "pre"
        else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    )
    out = {}
    with model.hooks({name: lambda t: out.__setitem__("h", t)}):
        model(x, key_mask=key_mask)
    return out["h"].double()


@torch.no_grad()
def reference_scores(model, seq):
    """The released code's way: one span per pass, the whole sentence, keys outside {SOS} ∪ [i, j] blocked."""
    model.eval()
    x = torch.tensor([seq])
    n = len(seq) - 1
    h = _hidden(model, x)[0, 1:]  # (n, d)
    s = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            mask = torch.ones(1, n + 1, dtype=torch.bool)
            mask[0, 0] = mask[0, i + 1 : j + 2] = False
            free = _hidden(model, x, mask)[0, 1:][i : j + 1].sum(0)
            s[i, j] = float(torch.nn.functional.cosine_similarity(h[i : j + 1].sum(0), free, dim=0))
    return s


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_batched_span_scores_equal_one_span_at_a_time(normalization, monkeypatch):
    model = tiny_lm(normalization).train()
    ids = sentences([1, 5, 2, 9, 5, 3, 7, 1, 8], seed=3)
    reference = [reference_scores(model, s) for s in ids]
    model.train()
    for max_tokens in (7, 64, tp.MAX_TOKENS):  # odd chunks, several, one per width
        batched = tp.span_scores(model, ids, max_tokens=max_tokens)
        assert model.training  # mode restored
        for got, want in zip(batched, reference):
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert np.isnan(got[np.tril_indices(len(got), -1)]).all()
    monkeypatch.setattr(tp, "GROUP_TOKENS", 12)  # several sentence groups
    for got, want in zip(tp.span_scores(model, ids, max_tokens=32), reference):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_prefix_spans_score_one_and_other_spans_do_not():
    model = tiny_lm()
    for s in tp.span_scores(model, sentences([6, 9, 4], seed=4)):
        assert (s[0] == 1.0).all()  # (0, j): the causal mask already blocks nothing; the same run, exactly 1
        i, j = np.triu_indices(len(s))
        assert (s[i[i > 0], j[i > 0]] < 0.9999).all()


# ---------------------------------------------------------------- a planted, exactly compositional encoder
def random_tree(rng, i, j):
    if i == j:
        return i
    k = rng.randrange(i, j)
    return random_tree(rng, i, k), random_tree(rng, k + 1, j)


def planted_encoder(trees: dict, width: int):
    """encode(tokens, key_mask) -> hidden, causal, for sentences told apart by their first word's token.

    With the visible words starting at a (words before a blocked), word p's state is e_p + N(a, p) − N(a, p−1),
    N(a, j) = g_j unless a = 0 or (a, j) is a constituent (leaves included), else 0 (e, g orthonormal). So a
    span's context-free vector Σ e_p + N(i, j) equals its contextual one Σ e_p exactly on the constituents
    (and the prefixes, as for every causal model): s = 1 there and s = sqrt(L / (L + 1)) < 1 elsewhere."""
    constituents = {first: mccoy.spans(t) | {(k, k) for k in mccoy.leaves(t)} for first, t in trees.items()}

    def encode(tokens, key_mask):
        out = torch.zeros(*tokens.shape, 2 * width, dtype=torch.float64)
        for r in range(len(tokens)):
            spans = constituents[int(tokens[r, 1])]
            a = int(key_mask[r, 1:].long().cumprod(0).sum())  # words blocked before the first visible one
            noisy = lambda q: float(q >= a > 0 and (a, q) not in spans)  # noqa: E731, B023  N(a, q) != 0 (used in this iteration)
            for p in range(tokens.shape[1] - 1):
                out[r, p + 1, p] = 1.0
                out[r, p + 1, width + p] += noisy(p)
                if p > 0:
                    out[r, p + 1, width + p - 1] -= noisy(p - 1)
        return out

    return encode


def test_planted_tree_is_recovered_by_greedy_and_dp():
    rng = random.Random(0)
    trees, ids = {}, []
    for s, n in enumerate([1, 2, 3, 5, 7, 8, 9, 9, 10, 10]):
        trees[1 + s] = random_tree(rng, 0, n - 1)
        ids.append([99, 1 + s, *[50 + rng.randrange(20) for _ in range(n - 1)]])
    trees[1 + 10] = mccoy.gold_tree("the newt who does swim doesn't admire the yak near your ravens .")
    ids.append([99, 11, *range(60, 71)])
    encode = planted_encoder(trees, 12)
    gold = [trees[s[1]] for s in ids]
    for s, tree in zip(tp.span_scores(encode, ids, max_tokens=40), gold):
        assert tp.greedy_tree(s) == tree and tp.dp_tree(s) == tree
        assert s[0, -1] == 1.0
    for decode in ("greedy", "exact_dp"):
        row = tp.tree_projection(encode, ids, gold, decode=decode)
        assert row["parseval"] == 1.0 and row["parseval_noroot"] == 1.0
        assert row["t_score"] > 0 and row["t_score_dp"] == pytest.approx(row["t_score_expected"])
        assert row["parseval_right_branching"] < 1.0


# ---------------------------------------------------------------- parsing and t_score
def all_trees(i, j):
    if i == j:
        yield i
        return
    for k in range(i, j):
        for left in all_trees(i, k):
            for right in all_trees(k + 1, j):
                yield left, right


def random_table(rng, n):
    return np.triu(rng.uniform(-1, 1, (n, n))) + np.tril(np.full((n, n), np.nan), -1)


def test_dp_is_exact_and_never_below_greedy():
    rng = np.random.default_rng(0)
    for n in range(1, 8):
        for _ in range(20):
            s = random_table(rng, n)
            best = max(tp.tree_score(s, t) for t in all_trees(0, n - 1))
            assert tp.tree_score(s, tp.dp_tree(s)) == pytest.approx(best, abs=1e-12)
            assert tp.tree_score(s, tp.greedy_tree(s)) <= best + 1e-12
    for n in (12, 30):
        s = random_table(rng, n)
        assert tp.tree_score(s, tp.dp_tree(s)) >= tp.tree_score(s, tp.greedy_tree(s)) - 1e-12
        assert sorted(mccoy.leaves(tp.dp_tree(s))) == list(range(n))


def released_tree_projection(chart, n):
    """The released `tree_projection(..., normalize=True)` (tree_projections_utils.py), global `random`."""

    def recurse(st, en):
        if st == en:
            return st, 0.0
        curr_split, best_val = st, -10000
        for k in range(st, en):
            if chart[st, k] + chart[k + 1, en] > best_val:
                best_val, curr_split = chart[st, k] + chart[k + 1, en], k
        p1, s1 = recurse(st, curr_split)
        p2, s2 = recurse(curr_split + 1, en)
        r = random.choice(range(st, en))
        return (p1, p2), s1 + s2 + best_val - (chart[st, r] + chart[r + 1, en])

    return recurse(0, n - 1)


def test_seeded_t_score_is_the_released_estimator_and_reproducible():
    rng = np.random.default_rng(1)
    tables = [random_table(rng, n) for n in (1, 2, 5, 9, 13, 4)]
    random.seed(7)
    released = [released_tree_projection(s, len(s)) for s in tables]
    mine = random.Random(7)
    for s, (tree, score) in zip(tables, released):
        assert tp.greedy_tree(s) == tree
        assert tp.tree_gain(s, tree, mine) == pytest.approx(score, abs=1e-12)
    model, ids = tiny_lm(), sentences([3, 8, 5, 6, 9], seed=5)
    a, b, c = (tp.tree_projection(model, ids, seed=seed) for seed in (3, 3, 4))
    assert a["t_score"] == b["t_score"] and a["t_score_per_word"] == b["t_score_per_word"]
    assert a["t_score"] != c["t_score"]
    assert a["t_score_expected"] == c["t_score_expected"]
    assert math.isnan(a["parseval"]) and math.isnan(a["parseval_noroot"])  # no gold trees (§6 #17)


def test_expected_t_score_is_the_mean_over_seeds():
    rng = np.random.default_rng(2)
    for n in (4, 9, 15):
        s = random_table(rng, n)
        tree = tp.greedy_tree(s)
        draws = [tp.tree_gain(s, tree, random.Random(seed)) for seed in range(4000)]
        assert np.mean(draws) == pytest.approx(tp.tree_gain(s, tree), abs=4 * np.std(draws) / math.sqrt(4000) + 1e-9)


# ---------------------------------------------------------------- PARSEVAL and the baselines
def test_parseval_micro_average_root_and_baselines():
    gold, pred = [((0, 1), (2, 3)), (0, (1, 2))], [(0, (1, (2, 3))), (0, (1, 2))]
    # brackets: gold {03, 01, 23} {02, 12}, pred {03, 13, 23} {02, 12}: 4 of 5 both ways
    assert tp.parseval(pred, gold) == pytest.approx(0.8)
    assert tp.parseval(pred, gold, root=False) == pytest.approx(2 / 3)  # {01, 23} {12} vs {13, 23} {12}
    for task, marker, target in (("question", "quest", 0.6628), ("tense", None, 0.5015)):
        items = [it for it in mccoy.load(MCCOY / f"{task}.val", task) if marker in (None, it.marker)]
        trees = [mccoy.gold_tree(it.sentence) for it in items]
        right = [mccoy.right_branching(len(it.sentence)) for it in items]
        assert tp.parseval(right, trees) == pytest.approx(target, abs=0.005)  # spec §5.4 (val, not train)
        assert tp.parseval(trees, trees) == 1.0


# ---------------------------------------------------------------- the measure set
SMALL = {"n_train": 400, "n_val": 20, "n_test": 20, "eval_items": 10}


def test_measure_set_on_the_structural_tasks():
    columns = {
        "t_score",
        "t_score_expected",
        "t_score_per_word",
        "t_score_dp",
        "parseval",
        "parseval_noroot",
        "parseval_right_branching",
    }
    with pytest.raises(ConfigError, match="tree_projection"):
        MEASURES["tree_projection"].check(build_task(TaskConfig(name="add", p=13), seed=0))
    for name in ("question_formation", "tense_inflection", "dyck"):
        task = build_task(TaskConfig(name=name, **SMALL), seed=0)
        MEASURES["tree_projection"].check(task)
        ids, gold = tp.analysis_sample(task, 30)
        assert len(ids) == 30 and all(s[0] == len(task.vocab) - 1 for s in ids)
        words = [[task.vocab[t] for t in s[1:]] for s in ids]
        if name == "dyck":
            assert gold is None and all(len(w) < 200 for w in words)
        else:
            marker = "quest" if name == "question_formation" else None
            assert all("." not in w for w in words) and [mccoy.gold_tree(w) for w in words] == gold
            if marker:  # the declaratives of the first 30 quest lines, in order
                seqs = [[task.vocab[t] for t in row[1:] if t] for row in task.train.inputs.tolist()]
                want = [s[: s.index(".")] for s in seqs if s[s.index(".") + 1] == "quest"][:30]
                assert words == want
        model = tiny_lm(d_vocab=len(task.vocab), n_ctx=task.train.inputs.shape[1] + 60)
        row = MEASURES["tree_projection"].compute(model, task, None, None)
        assert set(row) == columns
        assert math.isfinite(row["t_score"]) and math.isfinite(row["t_score_dp"])
        if name == "dyck":
            assert math.isnan(row["parseval"])
        else:
            assert 0.3 < row["parseval_right_branching"] < 0.8 and 0 <= row["parseval"] <= 1

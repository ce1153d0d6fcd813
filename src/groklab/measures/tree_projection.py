"""Tree projections of causal language models: how well a tree-structured, context-free composition
approximates the model's span representations. Murty et al. 2023, "Grokking of Hierarchical Structure in
Vanilla Transformers" (ACL), §4 (t_score, t_parseval), after Murty et al. 2022, "Characterizing Intrinsic
Compositionality in Transformers with Tree Projections" (ICLR 2023). Spec: structural-grokking.md §5.4 and
decisions §6 #9, #10, #17, #18. This module implements the released code's causal-LM variant
(`tree_projections/` of MurtyShikhar/structural-grokking): cosine similarity, last layer, the span mask at
every layer, greedy top-down parsing, one random split per node.

Span scores (`span_scores`). A sentence x = [SOS, w_0 .. w_{n-1}] (one token per word, positions never
shifted). With h_k the final-layer output at word k (after the last LayerNorm where there is one; for the
post-LN transformer, the last block's output), the contextual span vector is v_ij = Σ_{k=i..j} h_k; the
context-free one ṽ_ij is the same sum from a run in which every key outside {SOS} ∪ [i, j] is blocked at
every layer; s(i, j) = cos(v_ij, ṽ_ij). For a causal model every prefix span (0, j) scores 1.

Speed (spec "Scale notes"): the model must be causal (the output at position p depends on tokens 0..p
only, as every LM here). Then ONE run per sentence and span start i, with words 0..i-1 blocked, gives ṽ_ij
for every end j at once (the sum of its outputs over words i..j; the keys after j, which the released
code also blocks, cannot reach words <= j): n runs of n + 1 tokens per sentence instead of n(n+1)/2, and
exact. Runs of many sentences of equal length share a batch (no padding), at most `max_tokens` tokens per
model call, GROUP_TOKENS sentence tokens at a time (memory). The contextual run is start 0, so prefix
spans score exactly 1.

Trees are mccoy's: an int leaf (word index) or a pair (left, right). `scores` is an (n, n) float64 array,
s(i, j) at [i, j] for i <= j (NaN below the diagonal).
- `greedy_tree`: the released code's top-down parse, k* = argmax_k s(i, k) + s(k+1, j), first k on ties.
- `dp_tree`: the exact maximiser of the tree score (spec §5.4 step 5: not used by the released code).
- `tree_score`: Σ over internal nodes of s(left) + s(right) (the released `approximation_error`).
- `tree_gain`: Σ over internal nodes of [s(left) + s(right)] − [s(i, r) + s(r+1, j)], with r drawn per node
  from a seeded `random.Random` exactly as the released code does (random.choice(range(i, j)), nodes in
  post-order: left subtree, right subtree, node), or averaged exactly over all r (rng=None).
- `parseval`: bracketing F1 micro-averaged over the corpus, root brackets included unless root=False.
- `tree_projection`: all of it for a corpus, as the metrics columns (§6 #9, #10, #17).
- `analysis_sample`: the fixed analysis sample of a structural task's training data (§5.4, §6 #18).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from groklab.models.transformer import LayerNorm, Transformer
from groklab.tasks import mccoy
from groklab.tasks.base import IGNORE
from groklab.tasks.lm_eval import encode as encode_words

Tree = mccoy.Tree
Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# encode(tokens (batch, pos) int64, key_mask (batch, pos) bool, True = blocked key) -> hidden (batch, pos, d)

MAX_TOKENS = 8192  # tokens per model call
GROUP_TOKENS = 1 << 15  # sentence tokens whose contextual states are held at once
TASKS = ("question_formation", "tense_inflection", "dyck")
DYCK_MAX_TOKENS = 200  # Dyck analysis strings are shorter than this (spec §5.3, §5.4)


# ---------------------------------------------------------------- span scores
def transformer_encoder(model: Transformer) -> Encoder:
    """encode(tokens, key_mask) -> the final-layer output (batch, pos, d_model) of a groklab Transformer:
    `ln_final` for pre-LN, else the last block's output (post-LN: after its second LayerNorm)."""
    name = (
        "ln_final.hook_normalized"
        if isinstance(model.ln_final, LayerNorm)
        else f"blocks.{len(model.blocks) - 1}.hook_resid_post"
    )

    def encode(tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        out = {}
        with model.hooks({name: lambda t: out.__setitem__("h", t)}):
            model(tokens, key_mask=key_mask)
        return out["h"]

    return encode


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine (float64); exactly 1.0 for equal rows."""
    return (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))


@torch.no_grad()
def span_scores(
    model: Transformer | Encoder,
    sentences: Sequence[Sequence[int]],
    max_tokens: int = MAX_TOKENS,
    device: str | torch.device | None = None,
) -> list[np.ndarray]:
    """s(i, j) = cos(v_ij, ṽ_ij) for every span of every sentence: a list of (n, n) float64 arrays.

    model: a groklab Transformer (run in eval mode, its mode restored after, on its own device) or any
    causal `encode(tokens, key_mask) -> hidden` (see `Encoder`; run on `device`, default CPU).
    sentences: token ids [SOS, w_0 .. w_{n-1}], n >= 1 (e.g. `lm_eval.encode(vocab, words)`).
    """
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in sentences]
    if any(s.ndim != 1 or len(s) < 2 for s in seqs):
        raise ValueError("each sentence must be token ids [SOS, w_0 .. w_{n-1}] with at least one word")
    module = model if isinstance(model, torch.nn.Module) else None
    encode = transformer_encoder(model) if isinstance(model, Transformer) else model
    if device is None:
        device = next(model.parameters()).device if isinstance(model, Transformer) else torch.device("cpu")
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        out: list[np.ndarray | None] = [None] * len(seqs)
        by_length: dict[int, list[int]] = {}
        for b, seq in enumerate(seqs):
            by_length.setdefault(len(seq), []).append(b)
        for width, members in sorted(by_length.items()):  # sentences of equal length, GROUP_TOKENS at a time
            step = max(1, GROUP_TOKENS // width)
            for group in (members[k : k + step] for k in range(0, len(members), step)):
                scores = _length_scores(encode, torch.stack([seqs[b] for b in group]).to(device), max_tokens)
                for b, table in zip(group, scores.cpu().numpy()):
                    out[b] = table
        return out
    finally:
        if module is not None:
            module.train(was_training)


def _length_scores(encode: Encoder, x: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """x (group, n + 1): sentences of n words -> span scores (group, n, n), NaN below the diagonal.

    One run per sentence and span start i (words 0..i-1 blocked) serves every span (i, j): the model is
    causal, so ṽ_ij, the sum of that run's outputs over words i..j, is what the run with every key outside
    {SOS} ∪ [i, j] blocked gives (the keys after j cannot reach words <= j). Start 0 is the contextual run."""
    group, n = x.shape[0], x.shape[1] - 1
    per_call = max(1, max_tokens // (n + 1))
    context = torch.cat(
        [encode(rows, torch.zeros_like(rows, dtype=torch.bool)).double() for rows in x.split(per_call)]
    )  # (group, n + 1, d): h, SOS first
    scores = torch.empty(group, n, n, dtype=torch.float64, device=x.device)
    scores[:, 0] = _start_scores(context, context, torch.zeros(group, dtype=torch.long, device=x.device))
    pos = torch.arange(n + 1, device=x.device)
    b = torch.arange(group, device=x.device).repeat_interleave(n - 1)  # (rows,) sentence of each run
    i = torch.arange(1, n, device=x.device).repeat(group)  # (rows,) its span start
    for b_, i_ in zip(b.split(per_call), i.split(per_call)) if n > 1 else ():
        key_mask = (pos >= 1) & (pos <= i_[:, None])  # (rows, n + 1): words 0..i-1 blocked
        scores[b_, i_] = _start_scores(encode(x[b_], key_mask).double(), context[b_], i_)
    return scores


def _start_scores(free: torch.Tensor, context: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Runs with words 0..i-1 blocked, free (rows, n + 1, d), and the contextual runs (rows, n + 1, d) ->
    s(i, j) for j = 0..n-1 (rows, n), NaN for j < i. Both sums are taken the same way (float64)."""
    keep = torch.arange(free.shape[1] - 1, device=free.device) >= i[:, None]  # (rows, n): words i..
    v_free = (free[:, 1:] * keep[..., None]).cumsum(1)  # (rows, n, d): ṽ_ij at j
    v = (context[:, 1:] * keep[..., None]).cumsum(1)  # (rows, n, d): v_ij at j
    return _cosine(v, v_free).masked_fill(~keep, float("nan"))


# ---------------------------------------------------------------- parsing
def _table(scores: np.ndarray, n: int | None) -> tuple[np.ndarray, int]:
    s = np.asarray(scores, dtype=np.float64)
    return s, len(s) if n is None else n


def greedy_tree(scores: np.ndarray, n: int | None = None) -> Tree:
    """The released code's top-down parse: split (i, j) at k* = argmax_{k in i..j-1} s(i, k) + s(k+1, j),
    the first k winning ties, and recurse (O(n^2))."""
    s, n = _table(scores, n)

    def build(i: int, j: int) -> Tree:
        if i == j:
            return i
        k = i + int(np.argmax(s[i, i:j] + s[i + 1 : j + 1, j]))
        return build(i, k), build(k + 1, j)

    return build(0, n - 1)


def dp_tree(scores: np.ndarray, n: int | None = None) -> Tree:
    """The tree maximising `tree_score` (the sum of its split scores), by the exact O(n^3) chart DP
    best(i, j) = max_k s(i, k) + s(k+1, j) + best(i, k) + best(k+1, j); the first k wins ties."""
    s, n = _table(scores, n)
    best, split = np.zeros((n, n)), np.zeros((n, n), dtype=np.int64)
    for length in range(2, n + 1):  # every span of this length at once
        i = np.arange(n - length + 1)[:, None]  # (spans, 1) start
        k = i + np.arange(length - 1)[None]  # (spans, length - 1) split points
        j = i + length - 1
        value = s[i, k] + s[k + 1, j] + best[i, k] + best[k + 1, j]
        arg = np.argmax(value, axis=1)
        best[i[:, 0], j[:, 0]], split[i[:, 0], j[:, 0]] = value[np.arange(len(i)), arg], i[:, 0] + arg

    def build(i: int, j: int) -> Tree:
        k = int(split[i, j])
        return i if i == j else (build(i, k), build(k + 1, j))

    return build(0, n - 1)


def _nodes(tree: Tree) -> list[tuple[int, int, int]]:
    """(i, k, j) of every internal node, post-order (left subtree, right subtree, node): span (i, j) split
    into (i, k) and (k+1, j)."""
    out: list[tuple[int, int, int]] = []

    def walk(t: Tree) -> tuple[int, int]:
        if isinstance(t, int):
            return t, t
        (i, k), (_, j) = walk(t[0]), walk(t[1])
        out.append((i, k, j))
        return i, j

    walk(tree)
    return out


def tree_score(scores: np.ndarray, tree: Tree) -> float:
    """Σ over the tree's internal nodes of s(left) + s(right) (the released code's `approximation_error`)."""
    s = np.asarray(scores, dtype=np.float64)
    return float(sum(s[i, k] + s[k + 1, j] for i, k, j in _nodes(tree)))


def tree_gain(scores: np.ndarray, tree: Tree, rng: random.Random | None = None) -> float:
    """t(S): Σ over internal nodes (i, k, j) of [s(i, k) + s(k+1, j)] − [s(i, r) + s(r+1, j)].

    rng given: one r per node, rng.choice(range(i, j)), nodes in post-order: the released code's estimator
    (its `tree_projection(..., normalize=True)`) with a seeded generator (§6 #9). rng=None: the random split
    averaged exactly over all r in i..j-1 (`t_score_expected`)."""
    s = np.asarray(scores, dtype=np.float64)
    gain = 0.0
    for i, k, j in _nodes(tree):
        if rng is not None:
            r = rng.choice(range(i, j))
            random_split = s[i, r] + s[r + 1, j]
        else:
            random_split = float(np.mean(s[i, i:j] + s[i + 1 : j + 1, j]))
        gain += s[i, k] + s[k + 1, j] - random_split
    return float(gain)


# ---------------------------------------------------------------- PARSEVAL
def brackets(tree: Tree, root: bool = True) -> set[tuple[int, int]]:
    """(first, last) word of every internal node; the root's unless root=False."""
    out = mccoy.spans(tree)
    if not root and out:
        words = mccoy.leaves(tree)
        out.discard((min(words), max(words)))
    return out


def parseval(predicted: Sequence[Tree], gold: Sequence[Tree], root: bool = True) -> float:
    """Bracketing F1 of predicted against gold trees, precision and recall micro-averaged over the corpus
    (the released `get_parsing_accuracy`); root brackets count unless root=False (§6 #10). NaN if either side
    has no bracket at all."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted trees for {len(gold)} gold trees")
    hit = n_pred = n_gold = 0
    for p, g in zip(predicted, gold):
        if len(mccoy.leaves(p)) != len(mccoy.leaves(g)):
            raise ValueError(
                f"a predicted tree over {len(mccoy.leaves(p))} words for a gold tree over {len(mccoy.leaves(g))}"
            )
        bp, bg = brackets(p, root), brackets(g, root)
        hit, n_pred, n_gold = hit + len(bp & bg), n_pred + len(bp), n_gold + len(bg)
    if not n_pred or not n_gold:
        return float("nan")
    precision, recall = hit / n_pred, hit / n_gold
    return 2 * precision * recall / (precision + recall) if hit else 0.0


# ---------------------------------------------------------------- the measure
Sentence = Sequence[int] | Sequence[str] | str


@torch.no_grad()
def tree_projection(
    model: Transformer | Encoder,
    sentences: Sequence[Sentence],
    gold_trees: Sequence[Tree] | None = None,
    *,
    vocab: Sequence[str] | None = None,
    decode: Literal["greedy", "exact_dp"] = "greedy",
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Tree-projection scores of a corpus (Murty et al. 2023 §4; spec §5.4, §6 #9, #10, #17).

    sentences: token ids [SOS, w_0 .. w_{n-1}]; with `vocab` (an LM vocabulary, `lm_eval.lm_vocabulary`),
    words instead (a string or a sequence of words, SOS added). gold_trees: one mccoy tree per sentence over
    its words (e.g. `mccoy.gold_tree`), or None (Dyck). decode: the tree T̂ the scores below use.

    Returns
    - t_score: mean over sentences of `tree_gain(T̂)` with one seeded `random.Random(seed)` drawn in sentence
      order (the released code's estimator, not length-normalised);
    - t_score_expected: the same with the random split averaged exactly over r;
    - t_score_per_word: mean over sentences of t(S) / n_S, t(S) as in t_score (same draws);
    - t_score_dp: as t_score_expected, on the exact-DP tree (= t_score_expected when decode="exact_dp");
    - parseval / parseval_noroot: bracketing F1 of T̂ against the gold trees, root brackets included / not;
    - parseval_right_branching: the right-branching baseline's F1 (root included) against the same trees.
    The parseval columns are NaN without gold trees (§6 #17: the released code wrote 0.0 for Dyck).
    """
    if decode not in ("greedy", "exact_dp"):
        raise ValueError(f"decode must be 'greedy' or 'exact_dp', got {decode!r}")
    ids = [encode_words(vocab, s) for s in sentences] if vocab is not None else [list(s) for s in sentences]
    if not ids:
        raise ValueError("tree_projection needs at least one sentence")
    if gold_trees is not None and len(gold_trees) != len(ids):
        raise ValueError(f"{len(gold_trees)} gold trees for {len(ids)} sentences")
    scores = span_scores(model, ids, max_tokens, device)
    dp = [dp_tree(s) for s in scores]
    trees = dp if decode == "exact_dp" else [greedy_tree(s) for s in scores]
    rng = random.Random(seed)
    seeded = np.array([tree_gain(s, t, rng) for s, t in zip(scores, trees)])
    words = np.array([len(s) for s in scores])
    row = {
        "t_score": float(seeded.mean()),
        "t_score_expected": float(np.mean([tree_gain(s, t) for s, t in zip(scores, trees)])),
        "t_score_per_word": float((seeded / words).mean()),
        "t_score_dp": float(np.mean([tree_gain(s, t) for s, t in zip(scores, dp)])),
    }
    nan = float("nan")
    if gold_trees is None:
        return {**row, "parseval": nan, "parseval_noroot": nan, "parseval_right_branching": nan}
    return {
        **row,
        "parseval": parseval(trees, gold_trees),
        "parseval_noroot": parseval(trees, gold_trees, root=False),
        "parseval_right_branching": parseval([mccoy.right_branching(int(m)) for m in words], gold_trees),
    }


def analysis_sample(task, n: int) -> tuple[list[list[int]], list[Tree] | None]:
    """The fixed tree-projection sample of a structural task's training data (spec §5.4, §6 #18): token ids
    [SOS, w_0 .. w_{n-1}] and gold trees (None for Dyck).
    - question_formation: the first n training `quest` lines' declarative part (the words before ". quest");
    - tense_inflection: the first n training lines' source sentence (the words before ". PAST/PRESENT");
    - dyck: the first n training strings shorter than DYCK_MAX_TOKENS tokens.
    """
    if task.name not in TASKS or task.loss != "lm":
        raise ValueError(f"tree projections need a structural LM task ({', '.join(TASKS)}), not {task.name!r}")
    vocab = task.vocab
    markers = {"question_formation": ("quest",), "tense_inflection": ("PAST", "PRESENT")}.get(task.name)
    lengths = (task.train.labels != IGNORE).sum(1).tolist()  # [SOS] w1..wn: as many inputs as targets
    rows = (row for start in range(0, len(lengths), 1024) for row in task.train.inputs[start : start + 1024].tolist())
    ids: list[list[int]] = []
    for row, length in zip(rows, lengths):
        if len(ids) == n:
            break
        words = [vocab[t] for t in row[1:length]]
        if markers is None:
            if len(words) < DYCK_MAX_TOKENS:
                ids.append(row[:length])
        else:  # [SOS] sentence . marker output: keep [SOS] sentence
            end = words.index(".") if "." in words else 0
            if 0 < end < len(words) - 1 and words[end + 1] in markers:
                ids.append(row[: end + 1])
    if markers is None:
        return ids, None
    return ids, [mccoy.gold_tree([vocab[t] for t in seq[1:]]) for seq in ids]

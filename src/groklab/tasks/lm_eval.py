"""Accuracy of causal language models on the structural-grokking tasks (Murty et al. 2023, "Grokking of
Hierarchical Structure in Vanilla Transformers", ACL 2023, and its released code): Dyck closing brackets,
question formation, tense inflection. Spec: structural-grokking.md §2, §5.1 and decisions §6 #5, #11, #12, #13.

Conventions (spec §2; the tasks' tokenizer follows them):
- `vocab` is a tuple of strings and a token's id is its index: vocab[0] = "<pad>", then the sorted word
  types, vocab[-2] = "<eos>", vocab[-1] = "<sos>" (`lm_vocabulary` builds one).
- A sequence w1..wn is fed as [SOS] w1..wn, right-padded with 0 (`encode`, `pad_batch`); the LM predicts
  w_{t+1} at position t (SOS, at position 0, predicts w1).
- `logits_fn(tokens)`: tokens (batch, pos) LongTensor -> logits (batch, pos, |vocab|), a causal model: the
  logits at position t depend on tokens[:, :t+1] only, so the right padding cannot change them. Every
  function here calls it under torch.no_grad and takes the argmax on the logits' own device; the model
  must be in eval mode (`model_logits_fn` wraps a model: eval mode, no_grad, tokens moved to its device).

Metrics (names of the metrics table, §6) and which variant each function implements:
- `dyck_closing_accuracy` / `dyck_accuracies`: `dyck_acc_all` (released code: every closer) and
  `dyck_acc_far10` (paper App. A: closers whose opener is >= 10 tokens back), §6 #5.
- `qf_aux_rank_accuracy`: `qf_aux_rank_acc`, the released code's QF metric (the next token after `quest`,
  restricted to do / does / don't / doesn't); `qf_first_word_accuracy`: `qf_first_word_greedy_acc`, the
  paper's (first word of the greedy decode); `qf_exact_match_accuracy`: `qf_exact_match` (§6 #11).
- `tense_main_verb_accuracy`: the released tense scorer (POS sequence and main verb) on a greedy
  decode to EOS or 50 tokens, its last token removed from both sides as the released code does (or, as an
  option, only a final "."; §6 #13); every item is scored, or a
  subset of `max_items` drawn once from `seed` (§6 #12: the released code's unseeded 2k subsets are gone).

Every function is batched and deterministic (randomness only from an explicit `seed`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from groklab.tasks import dyck, mccoy

PAD, EOS, SOS = "<pad>", "<eos>", "<sos>"
LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (batch, pos) LongTensor -> (batch, pos, |vocab|) logits
Words = str | Sequence[str]  # a space-separated string or a sequence of tokens


# ---------------------------------------------------------------- vocabulary and encoding (§2)
def lm_vocabulary(words: Iterable[str]) -> tuple[str, ...]:
    """("<pad>", *sorted word types, "<eos>", "<sos>"): ids by index (spec §2; 71 for QF, 101 for tense, 43 for Dyck-20)."""
    return (PAD, *sorted(set(words)), EOS, SOS)


@functools.lru_cache(maxsize=32)
def _index(vocab: tuple[str, ...]) -> dict[str, int]:
    if len(vocab) < 3 or vocab[0] != PAD or vocab[-2] != EOS or vocab[-1] != SOS:
        raise ValueError(f"an LM vocabulary is ('{PAD}', *words, '{EOS}', '{SOS}'), got {vocab[:3]}...{vocab[-2:]}")
    index = {w: i for i, w in enumerate(vocab)}
    if len(index) != len(vocab):
        raise ValueError("an LM vocabulary must not repeat a token")
    return index


def _words(s: Words) -> tuple[str, ...]:
    return tuple(s.split()) if isinstance(s, str) else tuple(s)


def encode(vocab: Sequence[str], words: Words, sos: bool = True, eos: bool = False) -> list[int]:
    """Token ids of [SOS] w1..wn (sos=False: without SOS; eos=True: EOS appended). ValueError for a word not in vocab."""
    index = _index(tuple(vocab))
    try:
        ids = [index[w] for w in _words(words)]
    except KeyError as e:
        raise ValueError(f"word {e.args[0]!r} is not in the vocabulary") from None
    return [len(vocab) - 1] * sos + ids + [len(vocab) - 2] * eos


def pad_batch(seqs: Sequence[Sequence[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences with 0: tokens (batch, length) LongTensor (length: the longest if None) and
    their lengths (batch,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = int(lengths.max()) if length is None and len(seqs) else (length or 0)
    if len(seqs) and int(lengths.max()) > width:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit length {width}")
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)  # (batch, length)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return tokens, lengths


def model_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """A logits_fn for a model whose forward maps tokens (batch, pos) to logits (batch, pos, vocab), e.g.
    groklab's Transformer: each call runs it in eval mode (restoring its mode after) under no_grad, on the
    model's device. If the model has `new_cache()` and its forward takes `cache=` (a KV cache, as groklab's
    Transformer), the function has `new_cache` too and takes `cache=`: `greedy_decode` then feeds each new
    token once instead of recomputing the prefix."""
    device = next(model.parameters()).device

    def logits_fn(tokens: torch.Tensor, cache=None) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model(tokens.to(device)) if cache is None else model(tokens.to(device), cache=cache)
        finally:
            model.train(was_training)

    if callable(getattr(model, "new_cache", None)):
        logits_fn.new_cache = model.new_cache
    return logits_fn


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (stable), cut into batches: little padding, same batches on every call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _mean(correct: Sequence[bool] | np.ndarray) -> float:
    """Fraction correct; NaN when nothing was scored."""
    return float(np.mean(correct)) if len(correct) else math.nan


# ---------------------------------------------------------------- Dyck (§5.1, §6 #5)
class DyckScores(NamedTuple):
    """One entry per scored closing position, in file order."""

    string: np.ndarray  # (n,) int64: index of the string
    position: np.ndarray  # (n,) int64: t; the closer strings[i][t] is predicted from [SOS] + strings[i][:t]
    distance: np.ndarray  # (n,) int64: t minus the position of the bracket it closes
    correct: np.ndarray  # (n,) bool: the argmax over the closing tokens is strings[i][t]


def _dyck_tokens(s: Words) -> tuple[str, ...]:
    toks = _words(s)
    return toks[:-1] if toks and toks[-1] == dyck.END else toks


def _closer_ids(vocab: Sequence[str]) -> torch.Tensor:
    ids = [i for i, w in enumerate(vocab) if w.endswith(")") and w not in (PAD, EOS, SOS)]
    if not ids:
        raise ValueError("the vocabulary has no closing bracket tokens ('a)', 'b)', ...)")
    return torch.tensor(ids, dtype=torch.long)


def dyck_closing_scores(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    strings: Sequence[Words],
    min_distance: int = 0,
    batch_size: int = 64,
    max_prefixes: int | None = None,
) -> DyckScores:
    """Per-position results of the Dyck closing-bracket accuracy (spec §5.1), see `dyck_closing_accuracy`."""
    index = _index(tuple(vocab))
    toks = [_dyck_tokens(s) for s in strings]
    chosen = dyck.closing_prefixes(toks, n_min=max_prefixes, min_distance=min_distance)  # [(string, t)] in file order
    string = np.array([i for i, _ in chosen], dtype=np.int64)
    position = np.array([t for _, t in chosen], dtype=np.int64)
    distance = np.zeros(len(chosen), dtype=np.int64)
    correct = np.zeros(len(chosen), dtype=bool)
    rows: dict[int, list[int]] = {}  # string -> its entries in `chosen`
    for j, i in enumerate(string.tolist()):
        rows.setdefault(i, []).append(j)
    for i, js in rows.items():
        distance[js] = dyck.closing_targets(toks[i]).distance[position[js]]
    closers = _closer_ids(vocab)
    needed = {i: int(position[js[-1]]) for i, js in rows.items()}  # input [SOS] + w[:t_last] covers every t <= t_last
    strings_ = list(needed)
    with torch.no_grad():
        for batch in _length_batches([needed[i] for i in strings_], batch_size):
            ids = [strings_[b] for b in batch]
            tokens, _ = pad_batch([encode(vocab, toks[i][: needed[i]]) for i in ids])  # (batch, pos)
            js = [j for i in ids for j in rows[i]]
            b_idx = torch.tensor([r for r, i in enumerate(ids) for _ in rows[i]])
            t_idx = torch.as_tensor(position[js])
            target = torch.tensor([index[toks[string[j]][position[j]]] for j in js])
            logits = logits_fn(tokens)  # (batch, pos, vocab)
            dev = logits.device
            scores = logits[b_idx.to(dev), t_idx.to(dev)][:, closers.to(dev)]  # (entries, closers)
            pred = closers.to(dev)[scores.argmax(-1)]
            correct[js] = (pred == target.to(dev)).cpu().numpy()
    return DyckScores(string, position, distance, correct)


def dyck_closing_accuracy(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    strings: Sequence[Words],
    min_distance: int = 0,
    batch_size: int = 64,
    max_prefixes: int | None = None,
) -> float:
    """Dyck accuracy (spec §5.1): at every closing position t, feed [SOS] + w<t, restrict the last position's
    logits to the closing-bracket tokens, correct iff the argmax closes the top of the stack (is w_t).

    min_distance: score only closers whose opener is >= min_distance tokens back (10: paper App. A,
    `dyck_acc_far10`; 0: every closer, the released code, `dyck_acc_all`).
    max_prefixes: None scores every string; n selects as the released code does (`dyck.closing_prefixes`):
    whole strings in file order until at least n positions are chosen (5000 -> 784 strings, 5,008 prefixes
    on the k-20 val file), so n is a minimum, not a cap.
    One forward pass per batch of strings scores all of a string's positions at once: the model is causal,
    so the logits at position t of [SOS] + w see exactly [SOS] + w<t. strings: token sequences or file lines
    (a trailing END is dropped). NaN if no position is scored.
    """
    return _mean(dyck_closing_scores(logits_fn, vocab, strings, min_distance, batch_size, max_prefixes).correct)


def dyck_accuracies(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    strings: Sequence[Words],
    far: int = 10,
    batch_size: int = 64,
    max_prefixes: int | None = None,
) -> dict[str, float]:
    """{"dyck_acc_all", f"dyck_acc_far{far}"} from one scoring pass (§6 #5). With max_prefixes the strings are
    selected on all closers (as the released code) and far{far} is scored on those strings' far closers."""
    s = dyck_closing_scores(logits_fn, vocab, strings, 0, batch_size, max_prefixes)
    return {"dyck_acc_all": _mean(s.correct), f"dyck_acc_far{far}": _mean(s.correct[s.distance >= far])}


# ---------------------------------------------------------------- question formation and tense (§5.1, §6 #11-#13)
ItemLike = mccoy.Item | tuple  # an Item, or a (source, target) pair of token sequences / strings


def _items(items: Iterable[ItemLike]) -> list[mccoy.Item]:
    return [mccoy.Item(_words(src), _words(tgt)) for src, tgt in items]


def _subset(items: list, max_items: int | None, seed: int) -> list:
    """All items, or max_items of them drawn without replacement from numpy's PCG64 seeded by `seed`, in their order."""
    if max_items is None or len(items) <= max_items:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_items, replace=False))
    return [items[i] for i in keep.tolist()]


def _select(items: Iterable[ItemLike], quest_only: bool, max_items: int | None, seed: int) -> list[mccoy.Item]:
    its = _items(items)
    if quest_only:
        its = [it for it in its if it.marker == "quest"]
    return _subset(its, max_items, seed)


def greedy_decode(
    logits_fn: LogitsFn, vocab: Sequence[str], prefixes: Sequence[Words], max_new: int = 50, batch_size: int = 64
) -> list[tuple[str, ...]]:
    """Greedy continuation of each prefix: feed [SOS] + prefix, append the argmax token, until EOS or max_new
    new tokens; returns the new tokens, EOS excluded.

    Batched and exact: prefixes are batched by length, each item keeps its own write position, and the next
    token of an item is read at its own last position, so items of different lengths decode together as
    they would alone (causal model, right padding). With a KV cache (`logits_fn.new_cache`, see
    `model_logits_fn`) each column is fed once: the batch's shortest prefix at once, then one column per
    step, a longer prefix's own tokens until it ends; finished items leave the batch. Without one every step
    recomputes the whole prefix. logits_fn must accept len(prefix) + max_new tokens (SOS included, the last
    new token is never fed).
    """
    encoded = [encode(vocab, p) for p in prefixes]
    out: list[tuple[str, ...]] = [()] * len(encoded)
    decode = _decode_cached if callable(getattr(logits_fn, "new_cache", None)) else _decode_uncached
    with torch.no_grad():
        for batch in _length_batches([len(e) for e in encoded], batch_size):
            tokens, lengths = pad_batch([encoded[i] for i in batch], max(len(encoded[i]) for i in batch) + max_new)
            end = decode(logits_fn, tokens, lengths, max_new, eos=len(vocab) - 2) if max_new else lengths
            for r, i in enumerate(batch):
                new = tokens[r, int(lengths[r]) : int(end[r])].tolist()
                if new and new[-1] == len(vocab) - 2:
                    new = new[:-1]
                out[i] = tuple(vocab[t] for t in new)
    return out


def _decode_uncached(
    logits_fn: LogitsFn, tokens: torch.Tensor, lengths: torch.Tensor, max_new: int, eos: int
) -> torch.Tensor:
    """Write the greedy continuations into tokens (batch, width) after each item's length; return where
    each ends (batch,). Every step feeds the whole prefix of the items still going."""
    pos = lengths.clone()  # (batch,) where each item's next token goes
    active = torch.ones(len(tokens), dtype=torch.bool)
    for _ in range(max_new):
        rows = active.nonzero().squeeze(1)  # (active,)
        if not len(rows):
            break
        logits = logits_fn(tokens[rows, : int(pos[rows].max())])  # (active, width, vocab)
        dev = logits.device
        nxt = logits[torch.arange(len(rows), device=dev), (pos[rows] - 1).to(dev)].argmax(-1).cpu()  # (active,)
        tokens[rows, pos[rows]] = nxt
        pos[rows] += 1
        active[rows] = nxt != eos
    return pos


def _decode_cached(
    logits_fn: LogitsFn, tokens: torch.Tensor, lengths: torch.Tensor, max_new: int, eos: int
) -> torch.Tensor:
    """`_decode_uncached` with a KV cache: column t is fed once, for every item still going; an item whose
    prefix is longer than t feeds its own token there and ignores the prediction."""
    cache, t = logits_fn.new_cache(), int(lengths.min())
    end = lengths.clone()  # (batch,) where each item's continuation ends so far
    rows = torch.arange(len(tokens))  # the items still going, in the cache's row order
    logits = logits_fn(tokens[:, :t], cache=cache)[:, -1]  # (batch, vocab): the predictions for column t
    while True:
        nxt = logits.argmax(-1).cpu()  # (rows,)
        writing = t >= lengths[rows]  # past its prefix: column t is the model's token
        tokens[rows[writing], t] = nxt[writing]
        end[rows[writing]] = t + 1
        done = writing & ((nxt == eos) | (t + 1 - lengths[rows] >= max_new))
        if done.all():
            return end
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            cache.keep(keep.to(logits.device))
            rows = rows[keep]
        logits = logits_fn(tokens[rows, t : t + 1], cache=cache)[:, -1]
        t += 1


def qf_aux_rank_accuracy(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    items: Iterable[ItemLike],
    batch_size: int = 64,
    max_items: int | None = None,
    seed: int = 0,
) -> float:
    """`qf_aux_rank_acc`, the released code's QF metric (spec §5.1, §6 #11): for each `quest` item feed
    [SOS] + source (up to and including `quest`), restrict the next-token logits to do / does / don't /
    doesn't, correct iff the argmax is the gold first word (`mccoy.aux_rank_correct`; exact ties to the first in
    the released code's order, mccoy.RANKING_TIES). Other items are skipped; max_items: a fixed subset drawn from `seed`. NaN if none."""
    its = _select(items, True, max_items, seed)
    index = _index(tuple(vocab))
    aux = torch.tensor([index[a] for a in mccoy.AUXILIARIES])
    correct: list[bool] = []
    with torch.no_grad():
        for batch in _length_batches([len(it.source) for it in its], batch_size):
            tokens, lengths = pad_batch([encode(vocab, its[i].source) for i in batch])  # (batch, pos)
            logits = logits_fn(tokens)  # (batch, pos, vocab)
            dev = logits.device
            scores = logits[torch.arange(len(batch), device=dev), (lengths - 1).to(dev)][:, aux.to(dev)]  # (batch, 4)
            for i, s in zip(batch, scores.double().cpu().tolist()):
                correct.append(mccoy.aux_rank_correct(s, its[i].target))
    return _mean(correct)


def _greedy_scores(logits_fn, vocab, its, max_new, batch_size, *rules: Callable) -> list[float]:
    """One greedy decode of the items' sources, scored by each rule(prediction, gold target): its mean."""
    preds = greedy_decode(logits_fn, vocab, [it.source for it in its], max_new, batch_size)
    return [_mean([rule(p, it.target) for p, it in zip(preds, its)]) for rule in rules]


def qf_first_word_accuracy(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    items: Iterable[ItemLike],
    max_new: int = 50,
    batch_size: int = 64,
    max_items: int | None = None,
    seed: int = 0,
    quest_only: bool = True,
) -> float:
    """`qf_first_word_greedy_acc`, the paper's QF metric (spec §5.1, §6 #11): greedy-decode after the source,
    correct iff the first word is the gold first word (the main auxiliary of a `quest` item). Scores `quest`
    items (quest_only=False: every item); max_items: a fixed subset drawn from `seed`. NaN if none."""
    its = _select(items, quest_only, max_items, seed)
    return _greedy_scores(logits_fn, vocab, its, max_new, batch_size, mccoy.first_word_correct)[0]


def qf_exact_match_accuracy(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    items: Iterable[ItemLike],
    max_new: int = 50,
    batch_size: int = 64,
    max_items: int | None = None,
    seed: int = 0,
    quest_only: bool = True,
) -> float:
    """`qf_exact_match` (spec §6 #11): the greedy decode (EOS excluded) equals the whole gold output. Items as
    `qf_first_word_accuracy`."""
    its = _select(items, quest_only, max_items, seed)
    return _greedy_scores(logits_fn, vocab, its, max_new, batch_size, mccoy.exact_match)[0]


def qf_accuracies(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    items: Iterable[ItemLike],
    max_new: int = 50,
    batch_size: int = 64,
    max_items: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The three QF metrics of §6 #11 on the same `quest` items, with one greedy decode:
    {"qf_aux_rank_acc", "qf_first_word_greedy_acc", "qf_exact_match"}."""
    its = _select(items, True, max_items, seed)
    first_word, exact = _greedy_scores(
        logits_fn, vocab, its, max_new, batch_size, mccoy.first_word_correct, mccoy.exact_match
    )
    return {
        "qf_aux_rank_acc": qf_aux_rank_accuracy(logits_fn, vocab, its, batch_size),
        "qf_first_word_greedy_acc": first_word,
        "qf_exact_match": exact,
    }


def main_verb_correct(
    pred: Words, gold: Words, pos_table: Mapping[str, str | None] | None = None, end: mccoy.TenseEnd = "last_token"
) -> bool:
    """The released tense scorer (spec §5.1, `mccoy.main_verb_correct`) with a given POS table (e.g.
    `mccoy.load_pos("pos_tense.txt")`; None: the built-in table, equal to pos_tense on the task's words):
    the end removed from both (the released code's last token, or a final "."), POS sequences equal and
    main verbs identical (the second V if the third word is tagged R, else the first)."""
    return mccoy.main_verb_correct(_words(pred), _words(gold), mccoy.POS if pos_table is None else pos_table, end)


def tense_main_verb_accuracy(
    logits_fn: LogitsFn,
    vocab: Sequence[str],
    items: Iterable[ItemLike],
    pos_table: Mapping[str, str | None] | None = None,
    max_new: int = 50,
    batch_size: int = 64,
    max_items: int | None = None,
    seed: int = 0,
    end: mccoy.TenseEnd = "last_token",
) -> float:
    """The released tense metric (spec §5.1, §6 #12-#13): greedy-decode after the source (to EOS or
    max_new tokens), remove the end from prediction and target (`end`: the released code's last token
    before EOS, or a final "."), correct iff their POS sequences are equal and the main verbs identical
    (`main_verb_correct` with pos_table). Every item (PAST and PRESENT) is scored, or max_items of them
    drawn once from `seed`. NaN if none."""
    its = _select(items, False, max_items, seed)
    rule = lambda pred, gold: main_verb_correct(pred, gold, pos_table, end)  # noqa: E731
    return _greedy_scores(logits_fn, vocab, its, max_new, batch_size, rule)[0]

"""Question formation and tense reinflection (McCoy, Frank & Linzen 2020, "Does syntax need to grow on
trees?"), the two language tasks of Murty et al. 2023. Spec: structural-grokking.md §1.4-1.6, §5.1, §5.4.

The grammar is McCoy's PCFGs (`cfgs/question.gr`, `cfgs/tense.gr` of tommccoy1/rnn-hierarchical-biases):
    S  -> NP VP          NP -> Det N | Det N Prep Det N | Det N RC        (1 : 1 : 1)
    VP -> (Aux) V_intrans | (Aux) V_trans NP                              (1 : 1)
    RC -> Rel (Aux) V_intrans | Rel Det N (Aux) V_trans | Rel (Aux) V_trans Det N   (1 : 1 : 1)
with number agreement of Aux (question formation) or of the present-tense verb (tense) with its own subject.
Question formation writes present-tense sentences with do/does/don't/doesn't before every verb; tense
reinflection writes past-tense sources. The word lists below are the grammar's terminals.

Items are lines `<sentence> . <marker>\\t<output>` (§1.4, §1.5); in Python an `Item` holds both sides as
token tuples. Markers: `decl` (copy), `quest` (front the main auxiliary, end in `?`), `PAST` (copy),
`PRESENT` (re-inflect every verb to the present, agreeing with its own subject).

Split (McCoy's post-processing, §1.4-1.5): train and in-distribution val hold only items on which the
linear rule (front the first auxiliary / agree with the most recent noun) gives the same output as the
hierarchical one (front the main auxiliary / agree with the subject); the generalization set holds only
items where they differ: `quest` items with a relative clause on the subject, and `PRESENT` items whose
main verb's nearest preceding noun differs in number from the subject.

Trees (§5.4): a gold tree is a binary tree over the word positions of the declarative sentence, `.` and
marker stripped: a leaf is an int (word index), an inner node a pair `(left, right)`; see `gold_tree`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from groklab.errors import ConfigError

# ---- the grammar's terminals (McCoy's cfgs/*.gr; = the words of pos2.txt / pos_tense.txt that occur) ----
DETERMINERS = ("the", "some", "my", "your", "our", "her")
NOUNS_SG = (
    "newt",
    "orangutan",
    "peacock",
    "quail",
    "raven",
    "salamander",
    "tyrannosaurus",
    "unicorn",
    "vulture",
    "walrus",
    "xylophone",
    "yak",
    "zebra",
)
NOUNS_PL = (
    "newts",
    "orangutans",
    "peacocks",
    "quails",
    "ravens",
    "salamanders",
    "tyrannosauruses",
    "unicorns",
    "vultures",
    "walruses",
    "xylophones",
    "yaks",
    "zebras",
)
VERBS_INTRANS = ("giggle", "smile", "sleep", "swim", "wait", "move", "change", "read", "eat")
VERBS_TRANS = ("entertain", "amuse", "high_five", "applaud", "confuse", "admire", "accept", "remember", "comfort")
PAST = dict(
    giggle="giggled",
    smile="smiled",
    sleep="slept",
    swim="swam",
    wait="waited",
    move="moved",
    change="changed",
    read="read",
    eat="ate",
    entertain="entertained",
    amuse="amused",
    high_five="high_fived",
    applaud="applauded",
    confuse="confused",
    admire="admired",
    accept="accepted",
    remember="remembered",
    comfort="comforted",
)
THIRD_SG = {v: v + "s" for v in VERBS_INTRANS + VERBS_TRANS}  # giggles, high_fives, ...
AUX_SG, AUX_PL = ("does", "doesn't"), ("do", "don't")
AUXILIARIES = ("do", "does", "don't", "doesn't")  # the four candidates of the aux-ranking metric (§5.1)
RANKING_TIES = ("doesn't", "does", "do", "don't")  # exact ties go to the first of these, as in the released code
NEGATE = {"do": "don't", "don't": "do", "does": "doesn't", "doesn't": "does"}
PREPOSITIONS = ("around", "near", "with", "upon", "by", "behind", "above", "below")
RELATIVIZERS = ("who", "that")
MARKERS = {"question": ("decl", "quest"), "tense": ("PAST", "PRESENT")}  # (copy, transform)

# Tags as in pos2.txt / pos_tense.txt: D N V A P R, T for . and ?, G for task markers.
POS: dict[str, str] = {
    **{w: "D" for w in DETERMINERS},
    **{w: "N" for w in NOUNS_SG + NOUNS_PL},
    **{w: "V" for w in (*PAST, *PAST.values(), *THIRD_SG.values())},
    **{w: "A" for w in AUXILIARIES},
    **{w: "P" for w in PREPOSITIONS},
    **{w: "R" for w in RELATIVIZERS},
    ".": "T",
    "?": "T",
    **{w: "G" for m in MARKERS.values() for w in m},
}
_BARE = {**{v: v for v in PAST}, **{p: v for v, p in PAST.items()}, **{s: v for v, s in THIRD_SG.items()}}
_SG = set(NOUNS_SG)
_ALL_MARKERS = {w for m in MARKERS.values() for w in m}

# Rule weights: NP forms (bare, +PP, +RC) for the main subject and for objects, main VP (intransitive,
# transitive), RC forms (subject-gap intransitive, object-gap, subject-gap transitive) on subjects / objects.
PCFG_WEIGHTS = {
    "subject": (1, 1, 1),
    "object": (1, 1, 1),
    "vp": (1, 1),
    "subject_rc": (1, 1, 1),
    "object_rc": (1, 1, 1),
}
# ⚠ The released files do not follow cfgs/*.gr: about 20-24% of main verbs are intransitive (50% in the PCFG)
# where the subject is not a bare NP, and question formation also skews NP and RC forms. These weights are
# the counts in question.val / tense.val (subjects: decl / PAST items, which no split rule filters; objects:
# all items); with them the generated val matches the released one's structure (tests check it).
RELEASED_WEIGHTS = {
    "question": {
        "subject": (274, 126, 194),
        "object": (270, 254, 378),
        "vp": (20, 80),
        "subject_rc": (47, 93, 54),
        "object_rc": (203, 83, 92),
    },
    "tense": {**PCFG_WEIGHTS, "vp": (24, 76)},
}

Task = Literal["question", "tense"]
Tokens = str | Sequence[str]  # a space-separated string or a sequence of tokens
Tree = int | tuple  # int leaf (word index) | (Tree, Tree)


def vocabulary(task: Task) -> tuple[str, ...]:
    """Sorted word types of a task's files: 68 for question formation, 98 for tense (spec §1.4, §1.5)."""
    common = (*DETERMINERS, *NOUNS_SG, *NOUNS_PL, *PREPOSITIONS, *RELATIVIZERS, ".", *MARKERS[task])
    if task == "question":
        return tuple(sorted({*common, *PAST, *AUXILIARIES, "?"}))
    return tuple(sorted({*common, *PAST, *PAST.values(), *THIRD_SG.values()}))


def _tokens(s: Tokens) -> tuple[str, ...]:
    return tuple(s.split()) if isinstance(s, str) else tuple(s)


def _words(s: Tokens) -> tuple[str, ...]:
    """The sentence's words: a trailing marker, then a trailing `.` / `?`, removed."""
    w = _tokens(s)
    if w and w[-1] in _ALL_MARKERS:
        w = w[:-1]
    return w[:-1] if w and w[-1] in (".", "?") else w


# ---------------------------------------------------------------- parsing and gold trees (§5.4)
@dataclass(frozen=True)
class Parse:
    """The structure of a declarative sentence of the grammar (word indices into `words`)."""

    words: tuple[str, ...]
    tree: Tree  # gold binary tree, see `gold_tree`
    subject: int  # head noun of the main subject
    aux: int | None  # main-clause auxiliary (question formation), None in tense sentences
    verb: int  # main verb
    subject_rc: bool  # a relative clause modifies the main subject
    agreement: tuple[tuple[int, int], ...]  # (finite word: aux or verb, head noun of its subject), left to right


class _Parser:
    """Recursive descent over the grammar above; ValueError if the sentence is not in it."""

    def __init__(self, words: tuple[str, ...]):
        self.w, self.i, self.agree = words, 0, []
        self.has_aux = any(POS.get(x) == "A" for x in words)

    def fail(self, what: str):
        at = self.w[self.i] if self.i < len(self.w) else "<end>"
        raise ValueError(
            f"not a sentence of McCoy's grammar ({what} expected at word {self.i}, {at!r}): {' '.join(self.w)!r}"
        )

    def peek(self) -> str | None:
        return POS.get(self.w[self.i]) if self.i < len(self.w) else None

    def take(self, tag: str) -> int:
        if self.peek() != tag:
            self.fail({"D": "determiner", "N": "noun", "V": "verb", "A": "auxiliary", "R": "relativizer"}.get(tag, tag))
        self.i += 1
        return self.i - 1

    def np(self, mods: bool) -> tuple[Tree, int]:
        """Det N [Prep Det N | RC] -> ((d, n), (p, (d, n))) | ((d, n), rc); returns (tree, head noun)."""
        d = self.take("D")
        n = self.take("N")
        tree: Tree = (d, n)
        if mods and self.peek() == "P":
            p = self.take("P")
            tree = (tree, (p, self.np(mods=False)[0]))
        elif mods and self.peek() == "R":
            tree = (tree, self.rc(n))
        return tree, n

    def finite(self, subject: int, obj: Literal["bare", "full", "gap"]) -> Tree:
        """(Aux) V [object]: (a, vp) with aux, else vp; vp = v | (v, object NP). obj: what may follow a
        transitive verb: a bare NP (in an RC), a full NP (main clause), nothing (object-gap RC)."""
        a = self.take("A") if self.has_aux else None
        v = self.take("V")
        self.agree.append((v if a is None else a, subject))
        transitive = obj == "gap" or self.peek() == "D"
        if (_BARE.get(self.w[v]) in VERBS_TRANS) != transitive:
            self.i = v
            self.fail("transitive verb" if transitive else "intransitive verb")
        vp: Tree = (v, self.np(mods=obj == "full")[0]) if transitive and obj != "gap" else v
        return vp if a is None else (a, vp)

    def rc(self, head: int) -> Tree:
        """Rel VP_f (subject gap) -> (r, vp_f); Rel Det N (Aux) V (object gap) -> (r, ((d, n), vp_f))."""
        r = self.take("R")
        if self.peek() == "D":
            np_, n = self.np(mods=False)
            return r, (np_, self.finite(n, "gap"))
        return r, self.finite(head, "bare")

    def sentence(self) -> Parse:
        subj, n = self.np(mods=True)
        subject_rc = POS.get(self.w[n + 1]) == "R" if n + 1 < len(self.w) else False
        start = self.i
        vp = self.finite(n, "full")
        if self.i != len(self.w):
            self.fail("end of sentence")
        aux = start if self.has_aux else None
        verb = start + (1 if self.has_aux else 0)
        self._check_inflection()
        return Parse(self.w, (subj, vp), n, aux, verb, subject_rc, tuple(self.agree))

    def _check_inflection(self):
        """Aux / present verbs agree with their subjects; verbs after an aux are bare; no mixed tenses."""
        tenses = {"past", "present"}
        for f, s in self.agree:
            word, sg = self.w[f], self.w[s] in _SG
            if self.has_aux:
                ok = word in (AUX_SG if sg else AUX_PL) and self.w[f + 1] in PAST
                tenses_f = tenses
            else:
                bare = _BARE[word]
                tenses_f = {
                    t for t, form in (("past", PAST[bare]), ("present", THIRD_SG[bare] if sg else bare)) if word == form
                }
                ok = bool(tenses_f)
            tenses = tenses & tenses_f
            if not ok or not tenses:
                self.i = f
                self.fail("verb form agreeing with its subject")


def parse(sentence: Tokens) -> Parse:
    """Parse a declarative (question formation) or tense sentence of the grammar; a trailing `.` and marker
    are ignored. ValueError if the sentence does not follow the grammar (words, order, agreement)."""
    return _Parser(_words(sentence)).sentence()


def gold_tree(sentence: Tokens, punct: bool = False) -> Tree:
    """The gold binary tree of a sentence, over word indices 0..n-1 (`.` and marker stripped).

    Binarization (Murty's `parse_q_and_tense.py` on pos2 / pos_tense; McCoy's *_bracket files):
        NP = (Det, N) | ((Det, N), (Prep, (Det, N))) | ((Det, N), RC)
        RC = (Rel, VP_f) | (Rel, ((Det, N), VP_f))      VP_f = (Aux, VP) with an auxiliary, else VP
        VP = V | (V, NP)                                S = (NP, VP_f)
    e.g. "the newt who does swim doesn't eat ." -> (((0, 1), (2, (3, 4))), (5, 6)).
    punct=True keeps what the rules build before stripping: ((S, n), n + 1) with `.` at n, the marker at n + 1.
    """
    p = parse(sentence)
    n = len(p.words)
    return ((p.tree, n), n + 1) if punct else p.tree


def tree_words(tree: Tree, words: Sequence[str]) -> Tree:
    """The tree with word indices replaced by the words."""
    return words[tree] if isinstance(tree, int) else tuple(tree_words(t, words) for t in tree)


def leaves(tree: Tree) -> list[int]:
    """Word indices of a tree, left to right."""
    return [tree] if isinstance(tree, int) else [i for t in tree for i in leaves(t)]


def spans(tree: Tree) -> set[tuple[int, int]]:
    """(first, last) word index of every inner node, root included (the PARSEVAL brackets of §5.4)."""
    out: set[tuple[int, int]] = set()

    def walk(t: Tree) -> tuple[int, int]:
        if isinstance(t, int):
            return t, t
        (a, _), (_, b) = walk(t[0]), walk(t[1])
        out.add((a, b))
        return a, b

    walk(tree)
    return out


def right_branching(n: int) -> Tree:
    """(0, (1, (... (n-2, n-1)))): the right-branching baseline tree over n >= 1 words."""
    tree: Tree = n - 1
    for i in range(n - 2, -1, -1):
        tree = (i, tree)
    return tree


# ---------------------------------------------------------------- the transformations
def question(sentence: Tokens) -> tuple[str, ...]:
    """Hierarchical rule (move-main): front the main-clause auxiliary, end in `?`."""
    p = parse(sentence)
    if p.aux is None:
        raise ValueError(f"no auxiliary to front in {' '.join(p.words)!r}")
    w, a = p.words, p.aux
    return (w[a], *w[:a], *w[a + 1 :], "?")


def question_linear(sentence: Tokens) -> tuple[str, ...]:
    """Linear rule (move-first): front the first auxiliary, end in `?`."""
    w = _words(sentence)
    a = next((i for i, x in enumerate(w) if POS.get(x) == "A"), None)
    if a is None:
        raise ValueError(f"no auxiliary to front in {' '.join(w)!r}")
    return (w[a], *w[:a], *w[a + 1 :], "?")


def _present(verb: str, noun: str) -> str:
    bare = _BARE[verb]
    return THIRD_SG[bare] if noun in _SG else bare


def inflect_present(sentence: Tokens) -> tuple[str, ...]:
    """Hierarchical rule (agree-subject): every verb to the present, agreeing with its own subject; ends in `.`."""
    p = parse(sentence)
    if p.aux is not None:
        raise ValueError(f"tense sentences have no auxiliaries: {' '.join(p.words)!r}")
    out = list(p.words)
    for v, s in p.agreement:
        out[v] = _present(out[v], p.words[s])
    return (*out, ".")


def inflect_present_linear(sentence: Tokens) -> tuple[str, ...]:
    """Linear rule (agree-recent): every verb to the present, agreeing with the nearest noun before it."""
    w = _words(sentence)
    out, noun = list(w), None
    for i, x in enumerate(w):
        if POS.get(x) == "N":
            noun = x
        elif POS.get(x) == "V":
            if noun is None:
                raise ValueError(f"verb {x!r} has no noun before it: {' '.join(w)!r}")
            out[i] = _present(x, noun)
    return (*out, ".")


def to_past(sentence: Tokens) -> tuple[str, ...]:
    """Every verb to the past tense (how tense sources are made from the grammar's present sentences)."""
    return tuple(PAST[_BARE[x]] if POS.get(x) == "V" else x for x in _words(sentence))


def transform(source: Tokens, rule: Literal["hierarchical", "linear"] = "hierarchical") -> tuple[str, ...]:
    """The output for a source `<sentence> . <marker>`: decl / PAST copy it; quest and PRESENT apply `rule`."""
    src = _tokens(source)
    marker = src[-1] if src else None
    if marker in ("decl", "PAST"):
        return (*_words(src), ".")
    if marker == "quest":
        return question(src) if rule == "hierarchical" else question_linear(src)
    if marker == "PRESENT":
        return inflect_present(src) if rule == "hierarchical" else inflect_present_linear(src)
    raise ValueError(f"a source must end in one of {sorted(_ALL_MARKERS)}, got {' '.join(src)!r}")


def is_correct(source: Tokens, output: Tokens, rule: Literal["hierarchical", "linear"] = "hierarchical") -> bool:
    """Is `output` exactly the transformation of `source` (hierarchical: the task's answer; linear: the
    answer of the move-first / agree-recent rule)?"""
    return _tokens(output) == transform(source, rule)


def rules_disagree(source: Tokens) -> bool:
    """Do the linear and hierarchical rules give different outputs? (generalization items; False for copies)"""
    return transform(source, "linear") != transform(source, "hierarchical")


# ---------------------------------------------------------------- scoring helpers (§5.1, §6 #11)
def exact_match(pred: Tokens, gold: Tokens) -> bool:
    """Whole output identical (`qf_exact_match`)."""
    return _tokens(pred) == _tokens(gold)


def first_word_correct(pred: Tokens, gold: Tokens) -> bool:
    """Paper's QF metric (`qf_first_word_greedy_acc`): the decoded output starts with the gold first word,
    i.e. the main auxiliary of a `quest` item."""
    p, g = _tokens(pred), _tokens(gold)
    return bool(p) and bool(g) and p[0] == g[0]


def aux_rank_correct(scores: Mapping[str, float] | Sequence[float], gold: Tokens) -> bool:
    """Released code's QF metric (`qf_aux_rank_acc`): the model's next-token scores after `quest`, restricted
    to the four auxiliaries (a mapping, or a sequence in AUXILIARIES order), rank the gold first word top.
    Exact ties go to the first in RANKING_TIES order (doesn't, does, do, don't), the order of the released
    code's candidate list, whose argmax takes the first maximum."""
    values = [scores[a] for a in AUXILIARIES] if isinstance(scores, Mapping) else list(scores)
    if len(values) != len(AUXILIARIES):
        raise ValueError(f"need one score for each of {AUXILIARIES}, got {len(values)}")
    return max(RANKING_TIES, key=dict(zip(AUXILIARIES, values)).__getitem__) == _tokens(gold)[0]


def main_verb(tokens: Tokens, pos: Mapping[str, str | None] = POS) -> str | None:
    """Main verb as the released tense scorer finds it (§5.1): a final `.` stripped, the second V (by POS)
    if the third word is a relativizer (a relative clause on the subject), else the first; None if absent."""
    w = _tokens(tokens)
    w = w[:-1] if w and w[-1] == "." else w
    verbs = [x for x in w if pos.get(x) == "V"]
    k = 1 if len(w) > 2 and pos.get(w[2]) == "R" else 0
    return verbs[k] if len(verbs) > k else None


TenseEnd = Literal["last_token", "final_period"]


def main_verb_correct(
    pred: Tokens, gold: Tokens, pos: Mapping[str, str | None] = POS, end: TenseEnd = "last_token"
) -> bool:
    """Released tense metric (§5.1): with the end removed from both, the POS sequences are equal and the main
    verbs identical (a word without a tag, unknown or tagged empty, is tagged "?"). The end: "last_token",
    as the released code does (its decoder keeps the output up to the token before EOS, whatever that token
    is: a prediction without its final `.` loses its last word, one with two keeps a `.`); "final_period":
    a final `.` if there is one (kinder to malformed outputs early in training; they differ on no well-
    formed output)."""
    cut = (lambda t: t[:-1]) if end == "last_token" else (lambda t: t[:-1] if t and t[-1] == "." else t)
    p, g = cut(_tokens(pred)), cut(_tokens(gold))
    tag = lambda w: pos.get(w) or "?"  # noqa: E731
    return (
        [tag(x) for x in p] == [tag(x) for x in g]
        and main_verb(p, pos) is not None
        and main_verb(p, pos) == main_verb(g, pos)
    )


# ---------------------------------------------------------------- items, generation, files
class Item(NamedTuple):
    source: tuple[str, ...]  # sentence + (".", marker)
    target: tuple[str, ...]  # output, ending in "." or "?"

    @property
    def marker(self) -> str:
        return self.source[-1]

    @property
    def sentence(self) -> tuple[str, ...]:
        return self.source[:-2]

    @property
    def line(self) -> str:
        return " ".join(self.source) + "\t" + " ".join(self.target)


class Splits(NamedTuple):
    train: list[Item]
    val: list[Item]  # in-distribution: linear and hierarchical rules agree
    test: list[Item]  # generalization: they disagree


class _Draws:
    """Uniform draws from a numpy Generator, fetched in blocks (one stream per seed)."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.buf, self.i = rng, [], 0

    def __call__(self) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = self.rng.random(4096).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]

    def pick(self, seq: Sequence):
        return seq[int(self() * len(seq))]

    def category(self, weights: Sequence[float]) -> int:
        u, acc = self() * sum(weights), 0.0
        for j, w in enumerate(weights):
            acc += w
            if u < acc:
                return j
        return len(weights) - 1


def _sample_sentence(draw: _Draws, aux: bool, weights: Mapping[str, Sequence[float]]) -> list[str]:
    """A present-tense sentence from the PCFG (with auxiliaries for question formation)."""

    def noun(sg: bool) -> str:
        return draw.pick(NOUNS_SG if sg else NOUNS_PL)

    def finite(sg: bool, verbs: Sequence[str]) -> list[str]:
        v = draw.pick(verbs)
        return [draw.pick(AUX_SG if sg else AUX_PL), v] if aux else [THIRD_SG[v] if sg else v]

    def np_(sg: bool, role: str) -> list[str]:
        words, kind = [draw.pick(DETERMINERS), noun(sg)], draw.category(weights[role])
        if kind == 1:
            words += [draw.pick(PREPOSITIONS), draw.pick(DETERMINERS), noun(draw() < 0.5)]
        elif kind == 2:
            rc, words = draw.category(weights[role + "_rc"]), words + [draw.pick(RELATIVIZERS)]
            if rc == 0:
                words += finite(sg, VERBS_INTRANS)
            elif rc == 1:
                sg2 = draw() < 0.5
                words += [draw.pick(DETERMINERS), noun(sg2), *finite(sg2, VERBS_TRANS)]
            else:
                words += [*finite(sg, VERBS_TRANS), draw.pick(DETERMINERS), noun(draw() < 0.5)]
        return words

    sg = draw() < 0.5
    words = np_(sg, "subject")
    if draw.category(weights["vp"]) == 0:
        return words + finite(sg, VERBS_INTRANS)
    return words + finite(sg, VERBS_TRANS) + np_(draw() < 0.5, "object")


def _sample_item(draw: _Draws, task: Task, generalization: bool, weights) -> Item:
    """Rejection-sample an item of the training distribution (rules agree) or of the generalization set."""
    while True:
        words = _sample_sentence(draw, task == "question", weights)
        copy, change = MARKERS[task]
        marker = change if generalization or draw() < 0.5 else copy
        sentence = tuple(words) if task == "question" else to_past(words)
        source = (*sentence, ".", marker)
        if marker == copy:
            return Item(source, (*sentence, "."))
        target = transform(source)
        if (transform(source, "linear") != target) != generalization:
            continue
        if generalization and task == "question":
            # as McCoy's gen file: two auxiliaries, same number, opposite polarity (the first is never the answer)
            a = [x for x in sentence if POS[x] == "A"]
            if len(a) != 2 or a[0] != NEGATE[a[1]]:
                continue
        return Item(source, target)


def generate(
    task: Task,
    seed: int = 0,
    n_train: int = 100_000,
    n_val: int = 1_000,
    n_test: int = 10_000,
    weights: Literal["pcfg", "released"] | Mapping[str, Sequence[float]] = "pcfg",
) -> Splits:
    """Train / in-distribution val / generalization test items of McCoy's tasks (sizes of paper Table 1).

    Each item: a sentence from the PCFG and, with probability 1/2, the transforming marker (quest /
    PRESENT), else the copying one (decl / PAST). Train and val reject transforming items on which the
    linear and hierarchical rules disagree (so ~40% of question items are `quest`, ~42% of tense items
    `PRESENT`; the val samples have 40.6% / 44.2%); val also rejects items that are in train (the released
    val files lack the short sentences that training exhausts). Test items are all quest / PRESENT with the
    rules disagreeing; for questions also, as in McCoy's generalization file, the object has no relative
    clause and the two auxiliaries differ only in polarity, so the first auxiliary is never the answer.
    weights: "pcfg" (McCoy's cfgs/*.gr), "released" (RELEASED_WEIGHTS[task], closer to the released files),
    or a mapping overriding entries of PCFG_WEIGHTS. Randomness: numpy's PCG64 seeded by `seed`.
    """
    if task not in MARKERS:
        raise ConfigError(f"McCoy task must be 'question' or 'tense', got {task!r}")
    if min(n_train, n_val, n_test) < 0:
        raise ConfigError(f"McCoy split sizes must be >= 0, got {n_train}/{n_val}/{n_test}")
    if isinstance(weights, str) and weights not in ("pcfg", "released"):
        raise ConfigError(f"McCoy weights must be 'pcfg', 'released' or a mapping, got {weights!r}")
    w = (
        dict(PCFG_WEIGHTS)
        if weights == "pcfg"
        else RELEASED_WEIGHTS[task]
        if weights == "released"
        else {**PCFG_WEIGHTS, **weights}
    )
    if set(w) != set(PCFG_WEIGHTS) or any(
        len(w[k]) != len(PCFG_WEIGHTS[k]) or min(w[k]) < 0 or sum(w[k]) <= 0 for k in w
    ):
        raise ConfigError(
            f"McCoy grammar weights must have the keys and lengths of {PCFG_WEIGHTS} "
            f"(non-negative, not all zero), got {weights}"
        )
    draw = _Draws(np.random.default_rng(seed))
    train = [_sample_item(draw, task, False, w) for _ in range(n_train)]
    seen, val = {it.source for it in train}, []
    while len(val) < n_val:
        it = _sample_item(draw, task, False, w)
        if it.source not in seen:
            val.append(it)
    test = [_sample_item(draw, task, True, w) for _ in range(n_test)]
    return Splits(train, val, test)


def save(path: str | Path, items: Iterable[Item]) -> None:
    """Write items as McCoy's files: `source<TAB>target` per line, ASCII, LF, final newline."""
    Path(path).write_text("".join(it.line + "\n" for it in items), encoding="ascii", newline="\n")


def load(path: str | Path, task: Task | None = None) -> list[Item]:
    """Read a file in McCoy's format (question.{train,dev,test,gen}, tense.*; Murty's *.val / *.test).

    Each line: `<sentence> . <marker><TAB><output>`, one tab, single spaces, words of the task's vocabulary,
    output ending in `.` or `?`. The task is taken from the first line's marker unless given. Anything
    else raises ConfigError naming the file and line. (Whether outputs are correct is `is_correct`'s job.)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"McCoy data file {path} not found; give the path of a question.* or tense.* file")
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read McCoy data file {path}: {e}; expected ASCII text") from None
    if not lines:
        raise ConfigError(f"McCoy data file {path} is empty; expected lines '<sentence> . <marker>\\t<output>'")
    items, vocab = [], None
    for i, line in enumerate(lines, 1):
        parts = line.split("\t")
        src, tgt = (parts[0].split(), parts[1].split()) if len(parts) == 2 else ([], [])
        if len(src) < 3 or src[-2] != "." or src[-1] not in _ALL_MARKERS or not tgt or tgt[-1] not in (".", "?"):
            raise ConfigError(
                f"{path}:{i}: expected '<sentence> . <marker>\\t<output ending in . or ?>', got {line[:80]!r}"
            )
        if task is None:
            task = next(t for t, m in MARKERS.items() if src[-1] in m)
        if vocab is None:
            if task not in MARKERS:
                raise ConfigError(f"McCoy task must be 'question' or 'tense', got {task!r}")
            vocab = set(vocabulary(task))
        if src[-1] not in MARKERS[task]:
            raise ConfigError(f"{path}:{i}: marker {src[-1]!r} is not one of the {task} task's {MARKERS[task]}")
        bad = next((x for x in (*src, *tgt) if x not in vocab), None)
        if bad is not None:
            raise ConfigError(f"{path}:{i}: {bad!r} is not a word of McCoy's {task} vocabulary")
        items.append(Item(tuple(src), tuple(tgt)))
    return items


def load_pos(path: str | Path) -> dict[str, str | None]:
    """Read a POS table (pos.txt, pos2.txt, pos_tense.txt: `word<TAB>TAG` per line, spec §1.6): the first two
    tab-separated fields; an empty tag (SOS) is None; a trailing tab (the `t` line) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"POS table {path} not found; give the path of McCoy's pos.txt / pos2.txt / pos_tense.txt")
    table: dict[str, str | None] = {}
    for i, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0]:
            raise ConfigError(f"{path}:{i}: expected 'word<TAB>TAG', got {line[:60]!r}")
        table[fields[0]] = fields[1] or None
    return table

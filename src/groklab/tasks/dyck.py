"""Dyck-(k, d): well-nested strings over k bracket types, nested at most d deep, as generated for
"Grokking of Hierarchical Structure in Vanilla Transformers" (Murty et al. 2023, App. A; released code
`data_utils/dyck_helpers.py`). Spec: structural-grokking.md §1.1, §1.3, §5.1, §6 #5 and #15.

Tokens: an opening bracket of type x is `(x`, its closer `x)`; the k type ids are a..z, aa, bb, .. zz,
aaa, ... . In Python a string is a tuple of its tokens, without the END that ends every line of a file:
    file line  `(h h) (j (q q) j) END`   <->   ("(h", "h)", "(j", "(q", "q)", "j)")

Split (§1.3): cut a string into top-level segments (each ends where the stack is empty again); a
segment's path is its 0-1 open/close structure, e.g. "(()())". In-distribution (val) strings use only
segment paths seen in training and are not training strings; out-of-distribution (test) strings have at
least one unseen segment path. `split="string"` uses the paper's per-string criterion instead: the
whole string's 0-1 structure is (val) / is not (test) the structure of a training string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from groklab.errors import ConfigError

END = "END"
Tokens = str | Sequence[str]  # a file line / space-separated string, or a sequence of tokens


class Splits(NamedTuple):
    train: list[tuple[str, ...]]
    val: list[tuple[str, ...]]  # in-distribution: every segment path seen in training
    test: list[tuple[str, ...]]  # out-of-distribution (generalization): some segment path unseen


class Targets(NamedTuple):
    """Per position t of a string (the token an LM predicts from [SOS] + tokens[:t], i.e. at input position t)."""

    is_close: np.ndarray  # (n,) bool: token t is a closing bracket
    closer: np.ndarray  # (n,) int64: type of the one correct closer at t (the stack top); -1 if the stack is empty
    distance: np.ndarray  # (n,) int64: t minus the position of the bracket token t closes; -1 where token t opens


def bracket_ids(k: int) -> list[str]:
    """The k type ids of the released generator: a..z, then aa, bb, .., zz, aaa, ... (spec §1.3)."""
    return [chr(97 + i % 26) * (i // 26 + 1) for i in range(k)]


def vocabulary(k: int = 20) -> tuple[str, ...]:
    """The 2k bracket tokens, sorted (the LM adds <pad>, EOS and SOS around them: 43 ids for k = 20, spec §2)."""
    ids = bracket_ids(k)
    return tuple(sorted([f"({b}" for b in ids] + [f"{b})" for b in ids]))


def _type(bracket_id: str) -> int:
    """Type index of an id ('a' -> 0, 'aa' -> 26); ValueError if it is not one of the generator's ids."""
    if not bracket_id or not ("a" <= bracket_id[0] <= "z") or bracket_id != bracket_id[0] * len(bracket_id):
        raise ValueError(f"not a bracket type id: {bracket_id!r}")
    return (len(bracket_id) - 1) * 26 + ord(bracket_id[0]) - 97


def _bracket(token: str) -> tuple[bool, int]:
    """(is_open, type index) of a bracket token; ValueError for anything else."""
    if token.startswith("("):
        return True, _type(token[1:])
    if token.endswith(")"):
        return False, _type(token[:-1])
    raise ValueError(f"not a bracket token: {token!r}")


def _tokens(s: Tokens) -> tuple[str, ...]:
    toks = tuple(s.split()) if isinstance(s, str) else tuple(s)
    return toks[:-1] if toks and toks[-1] == END else toks


def is_well_nested(s: Tokens, depth: int | None = 10, k: int | None = None) -> bool:
    """True iff s is a Dyck string: brackets match, nesting never exceeds `depth`, types are < k
    (None: no limit). A trailing END is ignored."""
    stack: list[int] = []
    for tok in _tokens(s):
        try:
            opening, t = _bracket(tok)
        except ValueError:
            return False
        if k is not None and t >= k:
            return False
        if opening:
            stack.append(t)
            if depth is not None and len(stack) > depth:
                return False
        elif not stack or stack.pop() != t:
            return False
    return not stack


def segment_paths(s: Tokens) -> tuple[str, ...]:
    """0-1 structures of the top-level segments of a well-nested string, e.g. ("(())", "()")."""
    paths, path, d = [], [], 0
    for tok in _tokens(s):
        opening = _bracket(tok)[0]
        d += 1 if opening else -1
        if d < 0:
            raise ValueError(f"unbalanced Dyck string: {' '.join(_tokens(s))!r}")
        path.append("(" if opening else ")")
        if d == 0:
            paths.append("".join(path))
            path = []
    if d:
        raise ValueError(f"unbalanced Dyck string: {' '.join(_tokens(s))!r}")
    return tuple(paths)


def closing_targets(s: Tokens) -> Targets:
    """For every position: is the token a closer, which closer is correct, how far back its opener is.

    The paper's accuracy (§5.1) scores positions with is_close, restricting the prediction to the k
    closers; App. A keeps only distance >= 10 (`dyck_acc_far10`, §6 #5). ValueError if not well nested.
    """
    toks = _tokens(s)
    n = len(toks)
    is_close, closer, distance = np.zeros(n, bool), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    stack: list[tuple[int, int]] = []  # (type, position) of open brackets
    for t, tok in enumerate(toks):
        opening, ty = _bracket(tok)
        if stack:
            closer[t] = stack[-1][0]
        if opening:
            stack.append((ty, t))
            continue
        if not stack or stack[-1][0] != ty:
            raise ValueError(f"closer {tok!r} at position {t} does not match: {' '.join(toks)!r}")
        is_close[t], distance[t] = True, t - stack.pop()[1]
    return Targets(is_close, closer, distance)


def closing_prefixes(
    strings: Sequence[Tokens], n_min: int | None = 5000, min_distance: int = 0
) -> list[tuple[int, int]]:
    """The evaluation prefixes of the released code (spec §5.1): (string index, position t) of every closer
    with distance >= min_distance, taking whole strings in order until at least n_min are chosen
    (None: all). Prefix = tokens[:t], target = tokens[t]. On the k-20 val file: 784 strings, 5,008 prefixes."""
    chosen: list[tuple[int, int]] = []
    for i, s in enumerate(strings):
        tg = closing_targets(s)
        chosen += [(i, int(t)) for t in np.flatnonzero(tg.is_close & (tg.distance >= min_distance))]
        if n_min is not None and len(chosen) >= n_min:
            break
    return chosen


def _sample(
    rng: np.random.Generator, n: int, k: int, depth: int, min_len: int
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """n strings from the generator's automaton (spec §1.3), all stepped together, and their segment paths.

    One uniform u per step and string: empty stack: END if u < 1/2, else open type floor((u - 1/2) 2k);
    depth 1..d-1: close the top if u < 1/2, else open; depth d: close. An END before min_len tokens
    emits nothing and the string draws again (the released code's rejection).
    """
    if n == 0:
        return [], []
    stack = np.zeros((n, depth), np.int64)  # (n, depth) open types
    d, length = np.zeros(n, np.int64), np.zeros(n, np.int64)
    alive = np.arange(n)
    rows, codes = [], []  # emitted tokens: code t < k opens type t, k + t closes it
    while alive.size:
        u = rng.random(alive.size)
        da = d[alive]
        opening = (u >= 0.5) & (da < depth)
        closing = ~opening & (da > 0)
        code = np.minimum(((u - 0.5) * 2 * k).astype(np.int64), k - 1)
        r = alive[opening]
        stack[r, d[r]] = code[opening]
        d[r] += 1
        r = alive[closing]
        d[r] -= 1
        code[closing] = k + stack[r, d[r]]
        emit = opening | closing
        rows.append(alive[emit])
        codes.append(code[emit])
        length[alive[emit]] += 1
        alive = alive[emit | (length[alive] < min_len)]  # an END at length >= min_len ends the string
    rows_, codes_ = np.concatenate(rows), np.concatenate(codes)
    order = np.argsort(rows_, kind="stable")
    rows_, codes_ = rows_[order], codes_[order]  # (total,) tokens of string 0, then string 1, ...
    ids = bracket_ids(k)
    names = np.array([f"({b}" for b in ids] + [f"{b})" for b in ids], dtype=object)[codes_]
    cut = np.cumsum(np.bincount(rows_, minlength=n))
    strings = [tuple(x) for x in np.split(names, cut[:-1])]
    # Every string is balanced, so the running depth over the concatenation is 0 exactly at segment ends.
    is_open = codes_ < k
    ends = np.flatnonzero(np.cumsum(np.where(is_open, 1, -1)) == 0)
    struct = np.where(is_open, ord("("), ord(")")).astype(np.uint8).tobytes().decode("ascii")
    starts = np.concatenate([[0], ends[:-1] + 1])
    segments = np.array([struct[a : b + 1] for a, b in zip(starts.tolist(), ends.tolist())], dtype=object)
    per_row = np.cumsum(np.bincount(rows_[ends], minlength=n))
    paths = [tuple(x) for x in np.split(segments, per_row[:-1])]
    return strings, paths


def sample(n: int, seed: int = 0, k: int = 20, depth: int = 10, min_len: int = 4) -> list[tuple[str, ...]]:
    """n i.i.d. strings from the Dyck-(k, depth) generator (no split), from numpy's PCG64 seeded by `seed`."""
    return _sample(np.random.default_rng(seed), n, k, depth, min_len)[0]


def generate(
    seed: int = 0,
    n_train: int = 200_000,
    n_val: int = 20_000,
    n_test: int = 20_000,
    k: int = 20,
    depth: int = 10,
    min_len: int = 4,
    split: Literal["segment", "string"] = "segment",
) -> Splits:
    """Train / in-distribution val / out-of-distribution test, as the released code builds them (spec §1.3):
    sample n_train strings; then keep sampling, routing each new string to val (all its segment paths seen
    in training and not itself a training string) or test (some path unseen) until both are full. Defaults:
    the paper's Dyck-(20, 10), 200k / 20k / 20k strings, and the released code's min length 4.

    ⚠ Spec §1.3 infers min length 6 because the val file has no string shorter than 6; but every length-4
    string (800 of them) is in a 200k training set, so val cannot hold one either way. Min length 4 is
    what reproduces the file: 22.8% one-segment strings (min 6 gives 19%), 15.8% of length 6, mean 13.27.
    Duplicates are removed only against the training set, as in the released data (229 in the val file)."""
    if min(k, depth, min_len) < 1 or min(n_train, n_val, n_test) < 0:
        raise ConfigError(
            f"Dyck needs k, depth, min_len >= 1 and sizes >= 0 (got k={k}, depth={depth}, "
            f"min_len={min_len}, sizes {n_train}/{n_val}/{n_test})"
        )
    if split not in ("segment", "string"):
        raise ConfigError(f"Dyck split must be 'segment' or 'string', got {split!r}")
    rng = np.random.default_rng(seed)
    train, train_paths = _sample(rng, n_train, k, depth, min_len)
    key = (lambda p: p) if split == "segment" else (lambda p: ("".join(p),))
    seen = {q for p in train_paths for q in key(p)}
    train_set = set(train)
    val: list[tuple[str, ...]] = []
    test: list[tuple[str, ...]] = []
    drawn, budget = 0, 100 * (n_val + n_test) + 100_000
    while len(val) < n_val or len(test) < n_test:
        if drawn >= budget:
            raise ConfigError(
                f"Dyck split: found {len(val)}/{n_val} in-distribution and {len(test)}/{n_test} "
                f"out-of-distribution strings in {drawn} draws; lower n_val / n_test or change "
                "n_train / depth"
            )
        batch = min(max(4 * (n_val + n_test - len(val) - len(test)), 1000), 200_000)
        strings, paths = _sample(rng, batch, k, depth, min_len)
        drawn += batch
        for s, p in zip(strings, paths):
            if all(q in seen for q in key(p)):
                if len(val) < n_val and s not in train_set:
                    val.append(s)
            elif len(test) < n_test:
                test.append(s)
    return Splits(train, val, test)


def format_line(s: Tokens) -> str:
    """One line of a Dyck file: the tokens and END, separated by single spaces (no newline)."""
    return " ".join(_tokens(s) + (END,))


def save(path: str | Path, strings: Iterable[Tokens]) -> None:
    """Write strings in the released format: one per line, ending in END, ASCII, LF, final newline."""
    Path(path).write_text("".join(format_line(s) + "\n" for s in strings), encoding="ascii", newline="\n")


def load(path: str | Path, k: int | None = 20, depth: int | None = 10) -> list[tuple[str, ...]]:
    """Read a Dyck file in the released format (`k-20_d-10_{train,val,test}.txt`); END is dropped.

    Every line must be a well-nested Dyck-(k, depth) string followed by END (None: no limit);
    anything else raises ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Dyck data file {path} not found; give the path of a file with one bracket string "
            "per line ending in END (e.g. k-20_d-10_val.txt)"
        )
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read Dyck data file {path}: {e}; expected ASCII text") from None
    strings = []
    for i, line in enumerate(lines, 1):
        toks = line.split()
        if not toks or toks[-1] != END:
            raise ConfigError(f"{path}:{i}: a Dyck line must be bracket tokens followed by END, got {line[:60]!r}")
        if not is_well_nested(toks, depth, k):
            raise ConfigError(
                f"{path}:{i}: not a well-nested Dyck-(k={k}, d={depth}) string: {line[:60]!r}; "
                "for other k / depth pass k= / depth= (None: no limit)"
            )
        strings.append(tuple(toks[:-1]))
    if not strings:
        raise ConfigError(f"Dyck data file {path} is empty; expected one bracket string per line ending in END")
    return strings

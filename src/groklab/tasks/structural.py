"""Structural grokking tasks (Murty et al. 2023; spec structural-grokking.md): Dyck-(k, d), question
formation and tense inflection, as causal language modelling over whole sequences (spec §2).

Each task generates its data (seeded; `dyck.py`, `mccoy.py`) or reads the original files from a
directory (`path`): train = the training set, test = the in-distribution set (val), and the extra
split "gen" = the generalization set (the OOD Dyck strings; the relative-clause items). Tokens
(spec §2): `<pad>` = 0, the sorted word types, then `<eos>`, `<sos>`; a sequence is the whole line
(source, marker and output, all trained on): input [SOS] w1..wn, target w1..wn [EOS].

Besides token loss and accuracy (train_, test_, gen_), every evaluation logs the paper's metrics on
the first `eval_items` items of the in-distribution (id_) and generalization (gen_) sets:
- dyck: closing-bracket accuracy over all closers and over closers >= 10 tokens from their opener
  (`*_closing_acc`, `*_closing_acc_far10`; spec §5.1, decision 5);
- question_formation: the released code's four-auxiliary ranking (`*_aux_rank_acc`), the first word
  of the greedy decode (`*_first_word_acc`, the paper's) and exact match of the decode (`gen_exact_match`);
- tense_inflection: main-verb accuracy of the greedy decode (`*_main_verb_acc`; its end cut as the
  released code does, `main_verb_end`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from groklab.errors import ConfigError
from groklab.tasks import dyck, lm_eval, mccoy
from groklab.tasks.base import IGNORE, Split, Task
from groklab.tasks.lm_eval import lm_vocabulary, model_logits_fn
from groklab.tasks.registry import register_task

DECODE_ROOM = 50  # tokens a greedy decode may add after the source (spec §5.1)
EvalSample = Literal["first", "released"]
EVAL_SAMPLE = (
    "the held-out items the task metrics score: 'first' eval_items of each set, or the released code's "
    "choice (spec §5.1): Dyck whole strings in file order until >= 5,000 closers; question formation "
    "every quest item; tense every in-distribution item and a random 2,000 generalization items, "
    "drawn once from the data seed (the released code draws them unseeded at every evaluation)"
)
RELEASED_DYCK_PREFIXES, RELEASED_TENSE_ITEMS = 5000, 2000


class DyckParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(20, ge=1, le=52, description="bracket types")
    depth: int = Field(10, ge=1, description="maximum nesting depth")
    n_train: int = Field(200_000, ge=1)
    n_val: int = Field(20_000, ge=1)
    n_test: int = Field(20_000, ge=1)
    split: Literal["segment", "string"] = "segment"
    path: str | None = Field(None, description="directory with k-K_d-D_{train,val,test}.txt (the released format)")
    eval_items: int = Field(2000, ge=1, description="items of each held-out set scored by the task metrics")
    eval_sample: EvalSample = Field("first", description=EVAL_SAMPLE)


class McCoyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_train: int = Field(100_000, ge=1)
    n_val: int = Field(1_000, ge=1)
    n_test: int = Field(10_000, ge=1)
    weights: Literal["pcfg", "released"] = "pcfg"
    path: str | None = Field(
        None,
        description="directory with TASK.train, TASK.val, TASK.test (Murty et al.'s "
        "copies) or TASK.train, TASK.dev, TASK.gen (McCoy's repository); see _mccoy_sets",
    )
    eval_items: int = Field(2000, ge=1, description="items of each held-out set scored by the task metrics")
    eval_sample: EvalSample = Field("first", description=EVAL_SAMPLE)


class TenseParams(McCoyParams):
    main_verb_end: mccoy.TenseEnd = Field(
        "last_token",
        description="what main-verb accuracy removes from the end "
        "of a decoded output: its last token (the released code) or a final '.'",
    )


def lm_split(sequences: Sequence[Sequence[str]], vocab: tuple[str, ...], width: int) -> Split:
    """Sequences -> inputs [SOS] w1..wn and targets w1..wn [EOS], right-padded to `width`."""
    ids = {word: i for i, word in enumerate(vocab)}
    sos, eos = ids["<sos>"], ids["<eos>"]
    inputs = torch.zeros(len(sequences), width, dtype=torch.int64)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.int64)
    for row, words in enumerate(sequences):
        try:
            tokens = [ids[w] for w in words]
        except KeyError as err:
            raise ConfigError(f"token {err.args[0]!r} is not in the task's vocabulary") from None
        inputs[row, : len(tokens) + 1] = torch.tensor([sos, *tokens])
        labels[row, : len(tokens) + 1] = torch.tensor([*tokens, eos])
    return Split(inputs, labels, torch.arange(len(sequences)))


def _lm_task(
    name: str,
    words: Sequence[str],
    sets: dict[str, list],
    as_sequence: Callable,
    params: BaseModel,
    evaluate: Callable,
    eval_columns: tuple[str, ...],
    room: int = 0,
) -> Task:
    vocab = lm_vocabulary(words)
    sequences = {key: [tuple(as_sequence(item)) for item in items] for key, items in sets.items()}
    width = max(len(s) for seqs in sequences.values() for s in seqs) + 1
    split = {key: lm_split(seqs, vocab, width) for key, seqs in sequences.items()}
    return Task(
        name,
        split["train"],
        split["val"],
        n_classes=len(vocab),
        vocab=vocab,
        loss="lm",
        params=params.model_dump(),
        splits={"gen": split["test"]},
        evaluate=evaluate,
        eval_columns=("gen_loss", "gen_acc", *eval_columns),
        context=width + room,
    )


@register_task("dyck", DyckParams)
def build_dyck(params: DyckParams, seed: int) -> Task:
    if params.path is not None:
        stem = Path(params.path) / f"k-{params.k}_d-{params.depth}"
        sets = {key: dyck.load(f"{stem}_{key}.txt", params.k, params.depth) for key in ("train", "val", "test")}
    else:
        sets = dict(
            zip(
                ("train", "val", "test"),
                dyck.generate(
                    seed, params.n_train, params.n_val, params.n_test, params.k, params.depth, split=params.split
                ),
            )
        )
    vocab = lm_vocabulary(dyck.vocabulary(params.k))
    released = params.eval_sample == "released"
    held = (
        {"id": sets["val"], "gen": sets["test"]}
        if released
        else {"id": sets["val"][: params.eval_items], "gen": sets["test"][: params.eval_items]}
    )
    prefixes = RELEASED_DYCK_PREFIXES if released else None

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        fn, row = model_logits_fn(model), {}
        for key, strings in held.items():
            acc = lm_eval.dyck_accuracies(fn, vocab, strings, max_prefixes=prefixes)
            row[f"{key}_closing_acc"], row[f"{key}_closing_acc_far10"] = acc["dyck_acc_all"], acc["dyck_acc_far10"]
        return row

    columns = ("id_closing_acc", "id_closing_acc_far10", "gen_closing_acc", "gen_closing_acc_far10")
    return _lm_task("dyck", dyck.vocabulary(params.k), sets, lambda s: s, params, evaluate, columns)


def _mccoy_sets(task: str, params: McCoyParams, seed: int) -> dict[str, list]:
    """Train / in-distribution (val) / generalization (test) items, generated, or read from `params.path` in
    either layout of the released files: McCoy's repository (TASK.train, TASK.dev, TASK.test, TASK.gen;
    its .test is *in-distribution* and .gen the generalization set) or Murty et al.'s copies (TASK.train,
    TASK.val, TASK.test, where .test is McCoy's .gen). A TASK.gen file means McCoy's layout. The
    generalization set must hold items on which the linear and hierarchical rules disagree: one on which
    they never do is an in-distribution file under the wrong name, and is refused."""
    if params.path is None:
        return dict(
            zip(
                ("train", "val", "test"),
                mccoy.generate(task, seed, params.n_train, params.n_val, params.n_test, params.weights),
            )
        )
    folder = Path(params.path)
    mccoy_layout = (folder / f"{task}.gen").is_file()
    val = next(
        (name for name in ("dev", "val") if (folder / f"{task}.{name}").is_file()), "dev" if mccoy_layout else "val"
    )
    names = {"train": "train", "val": val, "test": "gen" if mccoy_layout else "test"}
    sets = {key: mccoy.load(folder / f"{task}.{name}", task) for key, name in names.items()}
    if not any(mccoy.rules_disagree(item.source) for item in sets["test"]):
        raise ConfigError(
            f"{folder / (task + '.' + names['test'])}: the linear and hierarchical rules agree on every "
            f"item, so it is an in-distribution set, not the generalization set; give the generalization "
            f"file as {task}.gen (McCoy's name) or {task}.test (Murty et al.'s)"
        )
    return sets


@register_task("question_formation", McCoyParams)
def build_question_formation(params: McCoyParams, seed: int) -> Task:
    sets = _mccoy_sets("question", params, seed)
    vocab = lm_vocabulary(mccoy.vocabulary("question"))
    last = None if params.eval_sample == "released" else params.eval_items
    quest = lambda items: [it for it in items if it.marker == "quest"][:last]  # noqa: E731
    held = {"id": quest(sets["val"]), "gen": quest(sets["test"])}

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        fn, row = model_logits_fn(model), {}
        for key, items in held.items():
            acc = lm_eval.qf_accuracies(fn, vocab, items)
            row[f"{key}_aux_rank_acc"], row[f"{key}_first_word_acc"] = (
                acc["qf_aux_rank_acc"],
                acc["qf_first_word_greedy_acc"],
            )
            if key == "gen":
                row["gen_exact_match"] = acc["qf_exact_match"]
        return row

    columns = ("id_aux_rank_acc", "id_first_word_acc", "gen_aux_rank_acc", "gen_first_word_acc", "gen_exact_match")
    return _lm_task(
        "question_formation",
        mccoy.vocabulary("question"),
        sets,
        lambda it: it.source + it.target,
        params,
        evaluate,
        columns,
        room=DECODE_ROOM,
    )


@register_task("tense_inflection", TenseParams)
def build_tense_inflection(params: TenseParams, seed: int) -> Task:
    sets = _mccoy_sets("tense", params, seed)
    vocab = lm_vocabulary(mccoy.vocabulary("tense"))
    if params.eval_sample == "released":  # all val items, a fixed random 2,000 generalization items (§5.1)
        held = {"id": (sets["val"], None), "gen": (sets["test"], RELEASED_TENSE_ITEMS)}
    else:
        held = {"id": (sets["val"][: params.eval_items], None), "gen": (sets["test"][: params.eval_items], None)}

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        fn = model_logits_fn(model)
        return {
            f"{key}_main_verb_acc": lm_eval.tense_main_verb_accuracy(
                fn, vocab, items, mccoy.POS, max_items=n, seed=seed, end=params.main_verb_end
            )
            for key, (items, n) in held.items()
        }

    return _lm_task(
        "tense_inflection",
        mccoy.vocabulary("tense"),
        sets,
        lambda it: it.source + it.target,
        params,
        evaluate,
        ("id_main_verb_acc", "gen_main_verb_acc"),
        room=DECODE_ROOM,
    )

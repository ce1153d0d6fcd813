"""Data of structural grokking (spec structural-grokking.md §1, §5): Dyck-(20, 10), question formation and
tense reinflection. The released samples are read from ../shared/data, never copied."""

import collections

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from groklab.errors import ConfigError
from groklab.tasks import dyck, mccoy

DATA = SHARED_DATA
DYCK_VAL = DATA / "dyck" / "k-20_d-10_val.txt"
MCCOY = DATA / "mccoy"
SAMPLE = {"question": MCCOY / "question.val", "tense": MCCOY / "tense.val"}
POS_FILE = {"question": MCCOY / "pos2.txt", "tense": MCCOY / "pos_tense.txt"}


def max_depth(s) -> int:
    d = m = 0
    for tok in s:
        d += 1 if tok.startswith("(") else -1
        m = max(m, d)
    return m


# ------------------------------------------------------------------------------------------------ Dyck
def test_dyck_splits_are_well_nested_and_split_by_segment_structure():
    sp = dyck.generate(seed=1, n_train=3000, n_val=400, n_test=400)
    assert [len(x) for x in sp] == [3000, 400, 400]
    for s in sp.train + sp.val + sp.test:
        assert dyck.is_well_nested(s, depth=10, k=20) and len(s) >= 4 and len(s) % 2 == 0
    seen = {p for s in sp.train for p in dyck.segment_paths(s)}
    train = set(sp.train)
    assert all(set(dyck.segment_paths(s)) <= seen and s not in train for s in sp.val)
    assert all(not set(dyck.segment_paths(s)) <= seen for s in sp.test)  # the OOD split has an unseen structure


def test_dyck_whole_string_split():
    sp = dyck.generate(seed=2, n_train=2000, n_val=200, n_test=200, split="string")
    seen = {"".join(dyck.segment_paths(s)) for s in sp.train}
    assert all("".join(dyck.segment_paths(s)) in seen for s in sp.val)
    assert all("".join(dyck.segment_paths(s)) not in seen for s in sp.test)


def test_dyck_generator_respects_k_and_depth():
    strings = dyck.sample(3000, seed=0, k=3, depth=4, min_len=2)
    assert all(dyck.is_well_nested(s, depth=4, k=3) for s in strings)
    assert max(max_depth(s) for s in strings) == 4  # the cap is reached, not just respected
    assert {t for s in strings for t in s} == set(dyck.vocabulary(3))
    assert min(len(s) for s in strings) == 2
    assert dyck.bracket_ids(28)[24:] == ["y", "z", "aa", "bb"] and len(dyck.vocabulary(20)) == 40


def test_dyck_generator_reproduces_released_val_statistics():
    """Generated in-distribution val vs the released file (spec §1.3): the default min length 4 matters
    (min length 6 gives ~19% one-segment strings and ~13% of length 6)."""
    val = dyck.generate(seed=0, n_val=5000, n_test=10).val
    one_segment = np.mean([len(dyck.segment_paths(s)) == 1 for s in val])
    lengths = np.array([len(s) for s in val])
    assert abs(one_segment - 4569 / 20000) < 0.02
    assert abs(np.mean(lengths == 6) - 3153 / 20000) < 0.015
    assert abs(lengths.mean() - 13.27) < 0.4 and lengths.min() == 6  # all 800 length-4 strings are in train
    far = sum((dyck.closing_targets(s).distance >= 10).sum() for s in val)
    closers = sum(dyck.closing_targets(s).is_close.sum() for s in val)
    assert abs(far / closers - 0.0713) < 0.01


def test_dyck_loader_reads_released_val():
    strings = dyck.load(DYCK_VAL)
    assert len(strings) == 20_000 and strings[0] == (
        "(h",
        "h)",
        "(j",
        "j)",
        "(q",
        "(n",
        "(r",
        "r)",
        "n)",
        "q)",
        "(r",
        "r)",
    )
    targets = [dyck.closing_targets(s) for s in strings]
    assert sum(t.is_close.sum() for t in targets) == 132_673
    assert sum((t.distance >= 10).sum() for t in targets) == 9_464
    chosen = dyck.closing_prefixes(strings)
    assert len(chosen) == 5_008 and len({i for i, _ in chosen}) == 784
    assert all(strings[i][t].endswith(")") for i, t in chosen)
    lengths = [len(s) for s in strings]
    assert (min(lengths), max(lengths)) == (6, 76) and len(strings) - len(set(strings)) == 229
    depths = collections.Counter(max_depth(s) for s in strings)
    assert [depths[d] for d in range(1, 11)] == [1274, 6255, 6032, 3775, 1805, 659, 162, 29, 6, 3]


def test_closing_targets_by_hand():
    tg = dyck.closing_targets("(a (b b) (c c) a) (d d) END")
    assert tg.is_close.tolist() == [False, False, True, False, True, True, False, True]
    assert tg.closer.tolist() == [-1, 0, 1, 0, 2, 0, -1, 3]  # the stack top before each token
    assert tg.distance.tolist() == [-1, -1, 1, -1, 1, 5, -1, 1]
    assert dyck.closing_prefixes(["(a (b b) a)", "(c c)"], n_min=None, min_distance=3) == [(0, 3)]
    assert dyck.segment_paths("(a (b b) a) (d d)") == ("(())", "()")
    with pytest.raises(ValueError):
        dyck.closing_targets("(a b)")


@pytest.mark.parametrize(
    "s, depth, k",
    [
        ("(a b)", 10, None),
        ("(a a) b)", 10, None),
        ("(a (b b)", 10, None),
        ("(a (b b) a)", 1, None),
        ("(u u)", 10, 20),
        ("(a x a)", 10, None),
        ("(A A)", 10, None),
        ("(ab ab)", 10, None),
    ],
)
def test_is_well_nested_rejects(s, depth, k):
    assert not dyck.is_well_nested(s, depth=depth, k=k)
    assert dyck.is_well_nested("(a (b b) a) (t t) END", depth=2, k=20)


def test_dyck_generation_is_seeded():
    a, b = (
        dyck.generate(seed=5, n_train=500, n_val=50, n_test=50),
        dyck.generate(seed=5, n_train=500, n_val=50, n_test=50),
    )
    assert a == b and a != dyck.generate(seed=6, n_train=500, n_val=50, n_test=50)


def test_dyck_save_load_roundtrip(tmp_path):
    strings = dyck.sample(50, seed=3)
    dyck.save(tmp_path / "k-20_d-10_train.txt", strings)
    assert dyck.load(tmp_path / "k-20_d-10_train.txt") == strings
    assert (tmp_path / "k-20_d-10_train.txt").read_text().splitlines()[0] == dyck.format_line(strings[0])


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "not found"),
        ("", "empty"),
        ("(a a)\n", "END"),
        ("(a b) END\n", "well-nested"),
        ("(a a) END\n(a (b b) END\n", ":2:"),
        (" ".join(["(a"] * 11 + ["a)"] * 11) + " END\n", "d=10"),
        ("(u u) (v v) END\n", "k=20"),
        ("(\xe9 \xe9) END\n", "ASCII"),
    ],
)
def test_dyck_bad_files_raise_config_error(tmp_path, content, problem):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_text(content, encoding="latin-1")
    with pytest.raises(ConfigError) as err:
        dyck.load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and problem in msg


def test_dyck_impossible_split_is_a_config_error():
    with pytest.raises(ConfigError, match="out-of-distribution"):  # depth 1: every segment is "()"
        dyck.generate(seed=0, n_train=100, n_val=10, n_test=10, depth=1)


# ----------------------------------------------------------------------------------------------- McCoy
@pytest.fixture(scope="module")
def samples():
    return {task: mccoy.load(path) for task, path in SAMPLE.items()}


@pytest.fixture(scope="module")
def generated():
    return {task: mccoy.generate(task, seed=0, n_train=4000, n_val=400, n_test=800) for task in SAMPLE}


def test_loaders_read_mccoy_samples(samples):
    q, t = samples["question"], samples["tense"]
    assert len(q) == len(t) == 1000
    assert collections.Counter(x.marker for x in q) == {"quest": 406, "decl": 594}
    assert collections.Counter(x.marker for x in t) == {"PAST": 558, "PRESENT": 442}
    for task, items in samples.items():
        types = {w for x in items for w in x.source + x.target}
        assert types == set(mccoy.vocabulary(task)) and len(types) == {"question": 68, "tense": 98}[task]
    assert q[1].line == (
        "our orangutan behind your vultures does entertain our newt behind some newt . quest\t"
        "does our orangutan behind your vultures entertain our newt behind some newt ?"
    )


@pytest.mark.parametrize("task", ["question", "tense"])
def test_every_sample_line_is_reproduced_and_in_distribution(samples, task):
    items = samples[task]
    assert np.mean([mccoy.is_correct(x.source, x.target) for x in items]) == 1.0  # all 1000 lines
    assert not any(mccoy.rules_disagree(x.source) for x in items)  # val: linear and hierarchical rules agree
    if task == "question":  # spec §1.4: in every quest item the first auxiliary is the fronted one
        assert all(
            x.target[0] == next(w for w in x.source if mccoy.POS[w] == "A") for x in items if x.marker == "quest"
        )


def test_pos_tables_agree_with_the_grammar():
    tables = {name: mccoy.load_pos(MCCOY / name) for name in ("pos.txt", "pos2.txt", "pos_tense.txt")}
    assert tables["pos2.txt"]["SOS"] is None and tables["pos2.txt"]["t"] == "C" and tables["pos_tense.txt"]["t"] == "C"
    assert tables["pos.txt"]["quest"] is None and tables["pos2.txt"]["quest"] == "G"
    assert len(tables["pos2.txt"]) == 81 and len(tables["pos_tense.txt"]) == 122  # `read` is listed twice
    assert all(tables["pos_tense.txt"][w] == tag for w, tag in mccoy.POS.items())
    for task in SAMPLE:
        assert set(mccoy.vocabulary(task)) <= set(mccoy.load_pos(POS_FILE[task]))


@pytest.mark.parametrize("task", ["question", "tense"])
def test_generated_items_are_correct_and_split_by_rule_agreement(generated, task):
    sp = generated[task]
    assert [len(x) for x in sp] == [4000, 400, 800]
    pos_words = set(mccoy.load_pos(POS_FILE[task]))
    for x in sp.train + sp.val + sp.test:
        assert x.target == mccoy.transform(x.source) and mccoy.is_correct(x.source, x.target)
        assert set(x.source + x.target) <= pos_words and set(x.source + x.target) <= set(mccoy.vocabulary(task))
    assert not any(mccoy.rules_disagree(x.source) for x in sp.train + sp.val)
    assert all(mccoy.rules_disagree(x.source) for x in sp.test)
    assert not {x.source for x in sp.val} & {x.source for x in sp.train}
    if task == "question":
        assert {x.marker for x in sp.test} == {"quest"}
        for x in sp.test:  # spec §1.4: RC on the subject, two auxiliaries, the first is never the answer
            p, aux = mccoy.parse(x.source), [w for w in x.sentence if mccoy.POS[w] == "A"]
            assert p.subject_rc and len(aux) == 2 and x.target[0] == aux[1] != aux[0]
    else:
        assert {x.marker for x in sp.test} == {"PRESENT"}
        for x in sp.test:  # spec §1.5: the noun nearest the main verb differs in number from the subject
            p = mccoy.parse(x.source)
            nearest = max(i for i in range(p.verb) if mccoy.POS[x.sentence[i]] == "N")
            assert (x.sentence[nearest] in mccoy.NOUNS_SG) != (x.sentence[p.subject] in mccoy.NOUNS_SG)
            assert not mccoy.main_verb_correct(mccoy.transform(x.source, "linear"), x.target)
    # the copy / transform shares match the released val files (quest 40.6%, PRESENT 44.2%)
    share = np.mean([x.marker in ("quest", "PRESENT") for x in sp.train])
    assert abs(share - {"question": 0.406, "tense": 0.442}[task]) < 0.04


def test_released_weights_move_the_grammar_towards_the_released_files(samples):
    """Share of intransitive main verbs where the subject is not a bare NP (no split rule touches it):
    released files 20% (question) / 24% (tense); McCoy's PCFG 50%."""

    def intransitive(items):
        ps = [mccoy.parse(x.source) for x in items]
        ps = [p for p in ps if mccoy.POS[p.words[2]] in ("P", "R")]  # subject with a PP or RC
        return np.mean([p.verb == len(p.words) - 1 for p in ps])

    for task, target in (("question", 0.20), ("tense", 0.24)):
        assert abs(intransitive(samples[task]) - target) < 0.02
        assert abs(intransitive(mccoy.generate(task, seed=1, n_train=2000, n_val=0, n_test=0).train) - 0.5) < 0.05
        released = mccoy.generate(task, seed=1, n_train=2000, n_val=0, n_test=0, weights="released").train
        assert abs(intransitive(released) - target) < 0.04


def test_transformations_by_hand():
    s = "the newt who does swim doesn't eat"
    assert " ".join(mccoy.question(s)) == "doesn't the newt who does swim eat ?"
    assert " ".join(mccoy.question_linear(s)) == "does the newt who swim doesn't eat ?"
    assert mccoy.rules_disagree(s + " . quest") and not mccoy.rules_disagree(s + " . decl")
    past = "my walrus by the yaks giggled"
    assert " ".join(mccoy.inflect_present(past)) == "my walrus by the yaks giggles ."
    assert " ".join(mccoy.inflect_present_linear(past)) == "my walrus by the yaks giggle ."
    assert mccoy.is_correct(past + " . PRESENT", "my walrus by the yaks giggle .", rule="linear")
    assert not mccoy.is_correct(past + " . PRESENT", "my walrus by the yaks giggle .")
    assert " ".join(mccoy.inflect_present("the newts that the yak amused ate")) == "the newts that the yak amuses eat ."
    assert mccoy.inflect_present("the yak who read comforted the newts") == tuple(
        ["the", "yak", "who", "reads", "comforts", "the", "newts", "."]
    )
    assert " ".join(mccoy.to_past("the newts who read eat")) == "the newts who read ate"


def test_gold_trees_by_hand():
    assert mccoy.gold_tree("the newt who does swim doesn't eat .") == (((0, 1), (2, (3, 4))), (5, 6))
    s = "her newt who our quails amused entertained the yak near her newts . PAST"
    assert mccoy.tree_words(mccoy.gold_tree(s), s.split()) == (
        (("her", "newt"), ("who", (("our", "quails"), "amused"))),
        ("entertained", (("the", "yak"), ("near", ("her", "newts")))),
    )
    assert mccoy.gold_tree("the newts do comfort my yak who doesn't read . quest", punct=True) == (
        (((0, 1), (2, (3, ((4, 5), (6, (7, 8)))))), 9),
        10,
    )
    present = "the newt who comforts the yaks eats ."
    assert mccoy.gold_tree(present) == mccoy.gold_tree(mccoy.to_past(present))


@pytest.mark.parametrize("task", ["question", "tense"])
def test_gold_trees_are_binary_and_cover_all_words(samples, generated, task):
    def binary(t):
        return isinstance(t, int) or (isinstance(t, tuple) and len(t) == 2 and binary(t[0]) and binary(t[1]))

    for x in samples[task] + generated[task].train[:1000] + generated[task].test[:300]:
        n, tree = len(x.sentence), mccoy.gold_tree(x.source)
        assert binary(tree) and mccoy.leaves(tree) == list(range(n)) and len(mccoy.spans(tree)) == n - 1
    # PARSEVAL baselines of spec §5.4 on the released sentences (QF: quest lines, as t_parseval scores them)
    items = [x for x in samples[task] if task == "tense" or x.marker == "quest"]
    gold = [mccoy.spans(mccoy.gold_tree(x.source)) for x in items]
    right = [mccoy.spans(mccoy.right_branching(len(x.sentence))) for x in items]
    f1 = sum(len(g & r) for g, r in zip(gold, right)) / sum(len(g) for g in gold)
    assert abs(f1 - {"question": 0.6628, "tense": 0.5015}[task]) < 0.01


@pytest.mark.parametrize(
    "sentence",
    [
        "the newt do swim",
        "the newt does comfort",
        "the newts do swim the yak",
        "the newt does",
        "newt does swim",
        "the newt comforted the yaks that sleep",
        "the newt comforts the yaks that slept",
        "the newt does swims",
        "the newt who does swim",
        "the newt does swim the",
    ],
)
def test_parse_rejects_sentences_outside_the_grammar(sentence):
    with pytest.raises(ValueError, match="grammar"):
        mccoy.parse(sentence)


def test_scoring_helpers():
    gold = ["doesn't", "the", "newt", "who", "does", "swim", "eat", "?"]
    assert mccoy.first_word_correct("doesn't the newt swim ?", gold) and not mccoy.first_word_correct("does", gold)
    assert not mccoy.first_word_correct([], gold)
    assert mccoy.exact_match(" ".join(gold), gold) and not mccoy.exact_match(gold[:-1], gold)
    assert mccoy.aux_rank_correct({"do": 0.1, "does": 0.5, "don't": -1.0, "doesn't": 2.0}, gold)
    assert not mccoy.aux_rank_correct([0.0, 3.0, 0.0, 2.0], gold)
    # exact ties in the released code's order: doesn't, does, do, don't
    assert mccoy.aux_rank_correct([0.0, 1.0, 0.0, 1.0], gold) and not mccoy.aux_rank_correct([0, 1, 0, 1], "does ...")
    assert mccoy.aux_rank_correct([1.0, 1.0, 1.0, 0.0], "does ...") and mccoy.aux_rank_correct([1, 0, 1, 0], "do ...")
    assert not mccoy.aux_rank_correct([1, 0, 1, 0], "don't ...")
    assert mccoy.main_verb("the newt who swims eats .") == "eats"
    assert mccoy.main_verb("the newt near the yaks eats the yak who swims .") == "eats"
    gold_t = "my walrus who amuses the yaks giggles ."
    assert mccoy.main_verb_correct(gold_t, gold_t)
    assert mccoy.main_verb_correct("my yak who amuse the yak giggles .", gold_t)  # only POS and main verb count
    # the end: the released code drops the last token whatever it is; "final_period" drops only a final "."
    assert not mccoy.main_verb_correct("my yak who amuse the yak giggles", gold_t)  # loses "giggles"
    assert mccoy.main_verb_correct("my yak who amuse the yak giggles", gold_t, end="final_period")
    assert not mccoy.main_verb_correct(gold_t + " .", gold_t)  # keeps one "."
    wrong_end = gold_t[:-1] + "yak"  # "... giggles yak": the released rule drops "yak", the other keeps it
    assert mccoy.main_verb_correct(wrong_end, gold_t) and not mccoy.main_verb_correct(
        wrong_end, gold_t, end="final_period"
    )
    assert not mccoy.main_verb_correct("my walrus who amuses the yaks giggle .", gold_t)
    assert not mccoy.main_verb_correct("my walrus who amuses yaks giggles .", gold_t)  # POS sequence differs
    assert not mccoy.main_verb_correct("my walrus who amuses the yaks blorps .", gold_t)


def test_mccoy_generation_is_seeded():
    a = mccoy.generate("question", seed=3, n_train=300, n_val=30, n_test=30)
    assert a == mccoy.generate("question", seed=3, n_train=300, n_val=30, n_test=30)
    assert a != mccoy.generate("question", seed=4, n_train=300, n_val=30, n_test=30)


def test_mccoy_save_load_roundtrip(tmp_path, generated):
    items = generated["tense"].test[:20] + generated["tense"].train[:20]
    mccoy.save(tmp_path / "tense.gen", items)
    assert mccoy.load(tmp_path / "tense.gen") == items
    assert (tmp_path / "tense.gen").read_text().splitlines()[0] == items[0].line


@pytest.mark.parametrize("task", ["question", "tense"])
def test_both_layouts_of_the_released_files(tmp_path, generated, task):
    """McCoy's repository (.train/.dev/.test/.gen: .test in-distribution, .gen the generalization set) and
    Murty et al.'s copies (.train/.val/.test: .test = McCoy's .gen) give the same task; a generalization
    file on which the two rules never disagree (an in-distribution file under the wrong name) is refused."""
    from groklab.config import TaskConfig
    from groklab.tasks import build_task

    splits = generated[task]
    name = {"question": "question_formation", "tense": "tense_inflection"}[task]
    files = {
        "mccoy": {"train": splits.train, "dev": splits.val, "test": splits.val[::-1], "gen": splits.test},
        "murty": {"train": splits.train, "val": splits.val, "test": splits.test},
    }
    built = {}
    for layout, contents in files.items():
        (tmp_path / layout).mkdir()
        for ext, items in contents.items():
            mccoy.save(tmp_path / layout / f"{task}.{ext}", items)
        built[layout] = build_task(TaskConfig(name=name, path=str(tmp_path / layout)), seed=0)
    for split in ("train", "test"):
        assert torch.equal(getattr(built["mccoy"], split).inputs, getattr(built["murty"], split).inputs)
    assert torch.equal(built["mccoy"].splits["gen"].inputs, built["murty"].splits["gen"].inputs)
    mccoy.save(tmp_path / "murty" / f"{task}.test", splits.val)  # McCoy's in-distribution .test in Murty's layout
    with pytest.raises(
        ConfigError, match=rf"{task}.test: the linear and hierarchical rules agree on every item.*{task}.gen"
    ):
        build_task(TaskConfig(name=name, path=str(tmp_path / "murty")), seed=0)


@pytest.mark.parametrize(
    "content, task, problem",
    [
        (None, None, "not found"),
        ("", None, "empty"),
        ("the newt does swim . quest does the newt swim ?\n", None, "expected"),  # no tab
        ("the newt does swim . quest\tdoes the newt\tswim ?\n", None, "expected"),  # two tabs
        ("the newt does swim quest\tdoes the newt swim ?\n", None, "expected"),  # no '.'
        ("the newt does swim . quest\tdoes the newt swim\n", None, "expected"),  # output without ? / .
        ("the newt does blorp . quest\tdoes the newt blorp ?\n", None, "blorp"),
        ("the newt does swim . quest\tdoes the newt swim ?\n", "tense", "'quest'"),
        ("the newt swam . PAST\tthe newt swam .\nthe newt does swim . quest\tdoes the newt swim ?\n", None, ":2:"),
    ],
)
def test_mccoy_bad_files_raise_config_error(tmp_path, content, task, problem):
    path = tmp_path / "bad.val"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        mccoy.load(path, task)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and problem in msg
    with pytest.raises(ConfigError):
        mccoy.load_pos(tmp_path / "missing_pos.txt")


def test_generate_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        mccoy.generate("parity")
    with pytest.raises(ConfigError):
        mccoy.generate("tense", weights={"vp": (1.0,)})
    with pytest.raises(ConfigError):
        mccoy.generate("tense", weights="paper")

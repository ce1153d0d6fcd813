import itertools
import random

import pytest
import torch

from groklab.config import TaskConfig
from groklab.errors import ConfigError
from groklab.tasks import TASKS, build_task
from groklab.tasks.permutations import PERMS, compose, index_of, inverse

REFERENCE = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "x2xyy2": lambda a, b, p: (a * a + a * b + b * b) % p,
    "x2y2": lambda a, b, p: (a * a + b * b) % p,
    "x3xy": lambda a, b, p: (a**3 + a * b) % p,
}


def all_examples(task):
    """(tokens, labels) of train and test together, in enumeration order."""
    index = torch.cat([task.train.index, task.test.index])
    order = torch.argsort(index)
    tokens = torch.cat([task.train.inputs, task.test.inputs])[order]
    labels = torch.cat([task.train.labels, task.test.labels])[order]
    return tokens, labels


@pytest.mark.parametrize("op", sorted(REFERENCE))
@pytest.mark.parametrize("p", [7, 13, 97])
def test_binary_operations_match_reference(op, p):
    task = build_task(TaskConfig(name=op, p=p), seed=0)
    tokens, labels = all_examples(task)
    assert len(labels) == p * p
    expected = [(a, b, REFERENCE[op](a, b, p)) for a in range(p) for b in range(p)]  # lexicographic, a outer
    assert [(a, b, c) for (a, b, _), c in zip(tokens.tolist(), labels.tolist())] == expected
    assert (tokens[:, 2] == p).all() and task.vocab[p] == "=" and task.d_vocab == p + 1 and task.n_classes == p


@pytest.mark.parametrize("p", [7, 97])
def test_division_is_exact_and_skips_zero(p):
    task = build_task(TaskConfig(name="div", p=p), seed=0)
    tokens, labels = all_examples(task)
    assert len(labels) == p * (p - 1)  # 9312 for p=97
    a, b = tokens[:, 0], tokens[:, 1]
    assert (b != 0).all()
    assert ((labels * b) % p == a).all()


def test_division_needs_a_prime_modulus():
    with pytest.raises(ConfigError, match="not prime"):
        build_task(TaskConfig(name="div", p=100), seed=0)
    build_task(TaskConfig(name="add", p=100), seed=0)  # addition is fine modulo anything


def test_random_table_is_fixed_by_the_seed():
    first, again, other = (build_task(TaskConfig(name="rand", p=11), seed=s) for s in (3, 3, 4))
    assert torch.equal(all_examples(first)[1], all_examples(again)[1])
    assert not torch.equal(all_examples(first)[1], all_examples(other)[1])
    assert all_examples(first)[1].max() < 11


def test_s5_group_laws():
    gen = torch.Generator().manual_seed(0)
    a, b, c = (PERMS[torch.randint(120, (500,), generator=gen)] for _ in range(3))
    identity = torch.arange(5).expand(500, 5)
    assert torch.equal(compose(compose(a, b), c), compose(a, compose(b, c)))  # associativity
    assert torch.equal(compose(a, identity), a) and torch.equal(compose(identity, a), a)
    assert torch.equal(compose(a, inverse(a)), identity) and torch.equal(compose(inverse(a), a), identity)
    assert torch.equal(index_of(PERMS), torch.arange(120))
    assert [tuple(p) for p in PERMS.tolist()] == list(itertools.permutations(range(5)))


@pytest.mark.parametrize("op", ["s5", "s5conj", "s5aba"])
def test_s5_tasks(op):
    task = build_task(TaskConfig(name=op), seed=0)
    tokens, labels = all_examples(task)
    assert len(labels) == 14_400 and task.d_vocab == 121 and task.n_classes == 120
    a, b, c = PERMS[tokens[:, 0]], PERMS[tokens[:, 1]], PERMS[labels]
    for i in random.Random(0).sample(range(14_400), 200):
        x, y, z = a[i].tolist(), b[i].tolist(), c[i].tolist()
        ab = [y[x[j]] for j in range(5)]  # (a*b)[j] = b[a[j]]
        want = {
            "s5": ab,
            "s5conj": [sorted(range(5), key=lambda k: x[k])[ab[j]] for j in range(5)],
            "s5aba": [x[ab[j]] for j in range(5)],
        }[op]
        assert z == want
    if op == "s5conj":  # a e a^-1 = e
        e = index_of(torch.arange(5)[None]).item()
        assert (labels[tokens[:, 1] == e] == e).all()


def test_nanda_split_reproduces_the_released_code():
    task = build_task(TaskConfig(name="add", p=113, frac_train=0.3, split="nanda"), seed=0)
    assert (len(task.train), len(task.test)) == (3830, 8939)
    assert task.train.inputs[:3, :2].tolist() == [[18, 34], [10, 83], [55, 28]]
    # Python's random.seed(0); random.shuffle over the lexicographic pairs, as in the released code
    pairs = [(i, j, 113) for i in range(113) for j in range(113)]
    random.seed(0)
    random.shuffle(pairs)
    assert task.train.inputs.tolist() == [list(t) for t in pairs[:3830]]
    assert task.test.inputs.tolist() == [list(t) for t in pairs[3830:]]


@pytest.mark.parametrize("split", ["random", "nanda"])
def test_split_is_reproducible_disjoint_and_complete(split):
    make = lambda seed: build_task(TaskConfig(name="mul", p=31, frac_train=0.4, split=split), seed=seed)  # noqa: E731
    one, two, other = make(5), make(5), make(6)
    assert torch.equal(one.train.index, two.train.index) and torch.equal(one.test.index, two.test.index)
    assert not torch.equal(one.train.index, other.train.index)
    everything = torch.cat([one.train.index, one.test.index])
    assert torch.equal(everything.sort().values, torch.arange(31 * 31))
    assert len(one.train) == int(0.4 * 31 * 31)


def test_power_train_pct_5_size():
    task = build_task(TaskConfig(name="add", p=97, frac_train=0.05), seed=0)
    assert len(task.train) == round(9409 * 0.05)  # Power et al.'s train_pct=5


@pytest.mark.parametrize("frac", [0.0, 1.0, 1.5, -0.1])
def test_train_fraction_outside_open_unit_interval_is_rejected(frac):
    with pytest.raises(ConfigError, match=r"frac_train.*\(0, 1\)"):
        build_task(TaskConfig(name="add", p=13, frac_train=frac), seed=0)


def test_unknown_task_and_parameter():
    with pytest.raises(ConfigError, match="unknown task 'ad'.*did you mean 'add'"):
        build_task(TaskConfig(name="ad"), seed=0)
    with pytest.raises(ConfigError, match="unknown key 'task.pp'.*did you mean 'task.p'"):
        build_task(TaskConfig(name="add", pp=13), seed=0)


def test_registry_lists_every_task():
    assert {"add", "sub", "mul", "div", "x2xyy2", "x2y2", "x3xy", "rand", "s5", "s5conj", "s5aba"} <= set(TASKS)

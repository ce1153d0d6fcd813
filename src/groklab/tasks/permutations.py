"""The S5 tasks of Power et al. 2022: products in the symmetric group on 5 elements.

Tokens 0..119 are the permutations of (0,1,2,3,4) in lexicographic order, token 120 is `=`.
Product convention as in Power et al.'s code (numpy `b[a]`, sympy `a*b`): apply a, then b,
i.e. (a*b)[i] = b[a[i]].
"""

from __future__ import annotations

import itertools

import torch

from groklab.tasks.base import SplitParams, Task, make_task
from groklab.tasks.registry import register_task

PERMS = torch.tensor(list(itertools.permutations(range(5))))  # (120, 5)
_CODE = {tuple(p.tolist()): i for i, p in enumerate(PERMS)}


def index_of(perms: torch.Tensor) -> torch.Tensor:
    """Token ids of permutations given as arrays (..., 5)."""
    flat = perms.reshape(-1, 5).tolist()
    return torch.tensor([_CODE[tuple(p)] for p in flat]).reshape(perms.shape[:-1])


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a*b for permutation arrays (..., 5): apply a, then b."""
    return torch.gather(b, -1, a)


def inverse(a: torch.Tensor) -> torch.Tensor:
    return torch.argsort(a, dim=-1)


OPS = {
    "s5": lambda a, b: compose(a, b),  # c_i = b[a_i]
    "s5conj": lambda a, b: compose(compose(a, b), inverse(a)),  # a*b*a^-1
    "s5aba": lambda a, b: compose(compose(a, b), a),  # a*b*a
}


def build_s5(op: str, params: SplitParams, seed: int) -> Task:
    a, b = torch.cartesian_prod(torch.arange(120), torch.arange(120)).T
    c = index_of(OPS[op](PERMS[a], PERMS[b]))
    tokens = torch.stack([a, b, torch.full_like(a, 120)], dim=1)  # (14400, 3): [a, b, =]
    vocab = ["".join(map(str, p.tolist())) for p in PERMS] + ["="]
    return make_task(op, vocab, 120, tokens, c, params, seed)


for _op in OPS:
    register_task(_op, SplitParams)(lambda params, seed, _op=_op: build_s5(_op, params, seed))

"""Binary operations over Z_p (Power et al. 2022; Nanda et al. 2023): input `[a, b, =]`, answer c.

Tokens 0..p-1 are the numbers, token p is `=`. All pairs are enumerated in lexicographic order
(a outer); division keeps the pairs with b != 0 and answers a * b^-1 exactly. With `inputs: onehot`
the input is instead the vector one-hot(a) ‖ one-hot(b) (2p features) for an MLP, as in Prieto et al.
2025's released code and Omnigrok's modular-addition MLP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from groklab.errors import ConfigError
from groklab.tasks.base import SplitParams, Task, make_task
from groklab.tasks.registry import register_task


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class ModularParams(SplitParams):
    p: int = Field(113, ge=2, description="the modulus")
    inputs: Literal["tokens", "onehot"] = Field("tokens", description="[a, b, =] tokens, or one-hot(a) ‖ one-hot(b)")


def _inverse(b: torch.Tensor, p: int) -> torch.Tensor:
    """b^-1 mod a prime p for b != 0."""
    return torch.tensor([0] + [pow(x, -1, p) for x in range(1, p)])[b]


OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: a + b,
    "sub": lambda a, b, p: a - b,
    "mul": lambda a, b, p: a * b,
    "div": lambda a, b, p: a * _inverse(b, p),
    "x2xyy2": lambda a, b, p: a * a + a * b + b * b,
    "x2y2": lambda a, b, p: a * a + b * b,
    "x3xy": lambda a, b, p: a**3 + a * b,
}
NEEDS_FIELD = {"div"}


def build_modular(op: str, params: ModularParams, seed: int) -> Task:
    p = params.p
    if op in NEEDS_FIELD and not is_prime(p):
        raise ConfigError(
            f"task.p={p} is not prime, but '{op}' needs a field (every b != 0 invertible); "
            "choose a prime modulus such as 97 or 113"
        )
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T  # (p*p,) each, a outer
    if op == "div":
        a, b = a[b != 0], b[b != 0]
    if op == "rand":  # a fixed random table, drawn once from the data seed
        table = torch.randint(p, (p, p), generator=torch.Generator().manual_seed(seed))
        c = table[a, b]
    else:
        c = OPS[op](a, b, p) % p
    if params.inputs == "onehot":
        features = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()  # (n, 2p)
        return make_task(op, [], p, features, c, params, seed)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (n, 3): [a, b, =]
    vocab = [str(i) for i in range(p)] + ["="]
    return make_task(op, vocab, p, tokens, c, params, seed)


for _op in [*OPS, "rand"]:
    register_task(_op, ModularParams)(lambda params, seed, _op=_op: build_modular(_op, params, seed))

"""A groklab plugin in one file: a new task, x*y + x + y mod p, and a measure set, `symmetry`.

x*y + x + y = (x + 1)(y + 1) - 1: multiplication mod p seen through a shift of the operands, an operation
none of the built-in tasks has. The measure set asks whether the network has learnt that the operation is
commutative: the share of all pairs (a, b) on which its answer to `a b =` equals its answer to `b a =`,
seen or not in training.

Name this file in a config (`plugins: [plugin_task.py]`, relative to the config file) and run it:

    groklab run examples/my-experiment.yaml

docs/extending.md walks through it.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from groklab import register_measure, register_task
from groklab.errors import ConfigError
from groklab.tasks import Split, Task, split_indices


class XYParams(BaseModel):
    """The task's parameters: the config's `task:` keys besides `name` (a misspelt key is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p: int = Field(31, ge=2, description="the modulus")
    frac_train: float = Field(0.6, gt=0, lt=1, description="fraction of the p*p pairs trained on")


@register_task("xy_x_y", XYParams)
def build(params: XYParams, seed: int) -> Task:
    """Every pair (a, b) as the tokens [a, b, =] (token p is `=`); the answer, a class 0..p-1, is read at
    the last position. `seed` (the data seed) decides which pairs are trained on."""
    p = params.p
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T  # (p*p,) each, a outer
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (p*p, 3)
    answers = (a * b + a + b) % p  # (p*p,)
    train, test = split_indices(len(answers), params.frac_train, seed, "random")
    return Task(
        name="xy_x_y",
        train=Split(tokens[train], answers[train], train),
        test=Split(tokens[test], answers[test], test),
        n_classes=p,
        vocab=(*(str(i) for i in range(p)), "="),
        params=params.model_dump(),
    )


def check_pairs(task: Task) -> None:
    """The measure set applies to tasks whose inputs are [a, b, =] tokens; a ConfigError otherwise."""
    if not task.vocab or task.train.inputs.shape[1:] != (3,):
        raise ConfigError(f"measure set 'symmetry' needs a task with [a, b, =] inputs; task '{task.name}' is not one")


@register_measure("symmetry", check=check_pairs)
@torch.no_grad()
def symmetry(model: torch.nn.Module, task: Task) -> dict[str, float]:
    """`symmetry`: the share of all pairs, train and test, on which the answers to [a, b, =] and [b, a, =]
    agree (1.0 for a network that has learnt commutativity)."""
    was_training = model.training
    model.eval()
    tokens = torch.cat([task.train.inputs, task.test.inputs])  # (n, 3)
    answer = lambda x: task.outputs(model, x)[:, : task.n_classes].argmax(-1)  # noqa: E731  (n,)
    agree = (answer(tokens) == answer(tokens[:, [1, 0, 2]])).double().mean().item()
    model.train(was_training)
    return {"symmetry": agree}

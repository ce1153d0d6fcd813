"""Sparse parity (Barak et al. 2022), as trained by Hu et al. 2023 (§4.1; spec training-maps.md §2.2):
vectors drawn uniformly from {-1, +1}^n_bits, fresh for every data seed; the label is the product of
the first k bits (+-1), learned with a hinge loss."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from groklab.tasks.base import Split, Task
from groklab.tasks.registry import register_task


class ParityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_bits: int = Field(40, ge=1)
    k: int = Field(3, ge=1)
    n_train: int = Field(1000, ge=1)
    n_test: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _k_within_bits(self):
        if self.k > self.n_bits:
            raise ValueError(f"k={self.k} relevant bits cannot exceed n_bits={self.n_bits}")
        return self


@register_task("sparse_parity", ParityParams)
def build_parity(params: ParityParams, seed: int) -> Task:
    n = params.n_train + params.n_test
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, params.n_bits), generator=gen).float() * 2 - 1  # (n, n_bits) in {-1, +1}
    y = x[:, : params.k].prod(1)  # (n,) +-1
    idx = torch.arange(n)
    split = lambda sl: Split(x[sl], y[sl], idx[sl])  # noqa: E731
    return Task(
        "sparse_parity",
        split(slice(0, params.n_train)),
        split(slice(params.n_train, n)),
        n_classes=2,
        loss="hinge",
        params=params.model_dump(),
    )

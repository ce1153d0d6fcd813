"""What every task gives the trainer: token sequences, answers, and how an answer is scored."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from groklab.errors import ConfigError


@dataclass(frozen=True)
class Split:
    tokens: torch.Tensor  # (n, n_ctx) int64
    labels: torch.Tensor  # (n,) int64: the answer token
    index: torch.Tensor   # (n,) int64: position of each example in the task's enumeration order

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Task:
    """A sequence-classification task: the answer to `tokens` is read from the logits at `answer_pos`.

    Answers are the token ids 0 .. n_classes-1. The training objective is cross-entropy over every
    logit the model emits (`objective`); reported losses and accuracies use the answer classes only
    (`score`), so a model with extra outputs (Nanda's 114 with `=`) is scored on the same 113.
    """

    name: str
    vocab: tuple[str, ...]
    n_classes: int
    train: Split
    test: Split
    answer_pos: int = -1
    params: dict = field(default_factory=dict)

    def to(self, device: torch.device) -> "Task":
        move = lambda s: Split(s.tokens.to(device), s.labels.to(device), s.index)  # noqa: E731
        return dataclasses.replace(self, train=move(self.train), test=move(self.test))

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    @property
    def n_ctx(self) -> int:
        return self.train.tokens.shape[1]

    def objective(self, logits: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Mean cross-entropy over all output logits (batch, d_vocab_out), computed in `dtype`."""
        return F.cross_entropy(logits.to(dtype), labels)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Loss (float64 cross-entropy) and accuracy over the answer classes."""
        logits = logits[..., : self.n_classes].double()
        return {
            "loss": F.cross_entropy(logits, labels).item(),
            "acc": (logits.argmax(-1) == labels).double().mean().item(),
        }


class SplitParams(BaseModel):
    """Parameters every enumerated task shares: how the examples are split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frac_train: float = Field(0.3, description="fraction of all examples used for training")
    split: Literal["random", "nanda"] = "random"

    @field_validator("frac_train")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be in (0, 1): the fraction of all examples used for training")
        return value


def split_indices(n: int, frac_train: float, seed: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle 0..n-1 and cut: the first floor(frac_train * n) are train, the rest test.

    - "nanda": Python's `random.seed(seed); random.shuffle(...)` on the enumeration order, exactly as
      the released code of Nanda et al. 2023 (for p=113, seed 0: first pairs (18,34), (10,83), (55,28)).
    - "random": numpy's PCG64 permutation from `seed`.
    """
    if method == "nanda":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        order = torch.tensor(order)
    else:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_train = int(frac_train * n)
    if n_train < 1 or n_train >= n:
        raise ConfigError(f"task.frac_train={frac_train} leaves {n_train} of {n} examples for training; "
                          "choose a fraction that leaves both splits non-empty")
    return order[:n_train], order[n_train:]


def make_task(name: str, vocab: list[str], n_classes: int, tokens: torch.Tensor, labels: torch.Tensor,
              params: SplitParams, seed: int, **extra) -> Task:
    """Split an enumerated task into train/test."""
    train_idx, test_idx = split_indices(len(labels), params.frac_train, seed, params.split)
    split = lambda idx: Split(tokens[idx], labels[idx], idx)  # noqa: E731
    return Task(name, tuple(vocab), n_classes, split(train_idx), split(test_idx),
                params=params.model_dump(), **extra)


Builder = Callable[[BaseModel, int], Task]

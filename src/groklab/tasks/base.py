"""What every task gives the trainer: token sequences, answers, and how an answer is scored."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from groklab.errors import ConfigError
from groklab.tasks.losses import stablemax_cross_entropy

IGNORE = -100  # a language model's target at a padding position (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class Split:
    inputs: torch.Tensor  # (n, n_ctx) int64 tokens, or (n, ...) float features / images
    labels: torch.Tensor  # (n,) the answers: class ids (int64), or +-1 (float) for a hinge loss;
    #                       (n, n_ctx) next tokens for a language model, IGNORE at padding
    index: torch.Tensor  # (n,) int64: position of each example in the task's enumeration order

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Task:
    """A supervised task: inputs, answers, and how the model's outputs are scored.

    Sequence tasks (a vocabulary is given) read the answer from the logits at `answer_pos`; the
    answers are the token ids 0 .. n_classes-1. Other tasks feed their inputs (vectors, images) to
    the model whole. The training objective (`objective`) is cross-entropy over every output the
    model emits, or the hinge loss mean(max(0, 1 - y f(x))) for +-1 labels; reported losses and
    accuracies (`score`) use the answer classes only, so a model with extra outputs (Nanda's 114
    with `=`) is scored on the same 113.

    A language-model task (loss "lm") predicts every next token: inputs [SOS] w1..wn, labels
    w1..wn [EOS], right-padded (IGNORE in the labels); loss and accuracy are over the non-padding
    tokens. Its `splits` add held-out sets scored the same way (e.g. "gen": the generalization set),
    and `evaluate(model)` the task's own metrics (greedy decoding, closing-bracket accuracy, ...),
    whose column names `eval_columns` lists.
    """

    name: str
    train: Split
    test: Split
    n_classes: int
    vocab: tuple[str, ...] = ()
    answer_pos: int = -1
    loss: Literal["cross_entropy", "hinge", "lm"] = "cross_entropy"
    params: dict = field(default_factory=dict)
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # training batches only
    splits: dict[str, Split] = field(default_factory=dict)  # further held-out sets: NAME_loss, NAME_acc
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None  # the task's own metrics
    eval_columns: tuple[str, ...] = ()  # every metrics column the evaluation writes besides train_/test_
    context: int | None = None  # positions a model must handle (default: the inputs' length), e.g. to decode

    def to(self, device: torch.device) -> Task:
        move = lambda s: Split(s.inputs.to(device), s.labels.to(device), s.index)  # noqa: E731
        return dataclasses.replace(
            self,
            train=move(self.train),
            test=move(self.test),
            splits={name: move(split) for name, split in self.splits.items()},
        )

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    @property
    def n_ctx(self) -> int:
        return self.context or self.train.inputs.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    @property
    def n_outputs(self) -> int:
        """Outputs a model needs: one per class, or a single score for a hinge loss."""
        return 1 if self.loss == "hinge" else self.n_classes

    def outputs(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The model's answer logits (batch, n_outputs): at `answer_pos` for a sequence task."""
        if self.loss == "lm":
            return model(inputs)  # (batch, pos, d_vocab)
        return model(inputs, at=self.answer_pos) if self.vocab else model(inputs)

    def objective(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        dtype: torch.dtype = torch.float64,
        loss_fn: str = "cross_entropy",
    ) -> torch.Tensor:
        """The training loss, computed in `dtype`: mean cross-entropy over all outputs, or hinge; `loss_fn`
        "stablemax": StableMax cross-entropy instead (always float64, `tasks.losses`)."""
        if self.loss == "hinge":
            return torch.clamp_min(1 - labels.to(dtype) * logits.to(dtype).squeeze(-1), 0).mean()
        if self.loss == "lm":  # mean over the non-padding targets
            logits, labels = logits.flatten(0, 1), labels.flatten()
        if loss_fn == "stablemax":
            return stablemax_cross_entropy(logits, labels, IGNORE)
        return F.cross_entropy(logits.to(dtype), labels, ignore_index=IGNORE)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Loss (float64) and accuracy over the answer classes (hinge: the sign of the output)."""
        if self.loss == "hinge":
            out = logits.double().squeeze(-1)
            return {
                "loss": self.objective(out, labels).item(),
                "acc": (torch.sign(out) == labels).double().mean().item(),
            }
        if self.loss == "lm":  # next-token loss and accuracy over the non-padding targets
            real = labels != IGNORE
            return {
                "loss": self.objective(logits, labels).item(),
                "acc": (logits.argmax(-1)[real] == labels[real]).double().mean().item(),
            }
        logits = logits[..., : self.n_classes].double()
        return {
            "loss": F.cross_entropy(logits, labels).item(),
            "acc": (logits.argmax(-1) == labels).double().mean().item(),
        }


class SplitParams(BaseModel):
    """Parameters every enumerated task shares: how the examples are split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frac_train: float = Field(0.3, description="fraction of all examples used for training")
    split: Literal["random", "nanda", "torch"] = "random"

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
    - "torch": `torch.randperm(n)` after `torch.manual_seed(seed)`, as the TransformerLens grokking demo
      (data seed 598; spec progress-measures.md §6): an imported demo run keeps its split.
    """
    if method == "nanda":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        order = torch.tensor(order)
    elif method == "torch":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_train = int(frac_train * n)
    if n_train < 1 or n_train >= n:
        raise ConfigError(
            f"task.frac_train={frac_train} leaves {n_train} of {n} examples for training; "
            "choose a fraction that leaves both splits non-empty"
        )
    return order[:n_train], order[n_train:]


def make_task(
    name: str,
    vocab: list[str],
    n_classes: int,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    params: SplitParams,
    seed: int,
    **extra,
) -> Task:
    """Split an enumerated sequence task into train/test."""
    train_idx, test_idx = split_indices(len(labels), params.frac_train, seed, params.split)
    split = lambda idx: Split(tokens[idx], labels[idx], idx)  # noqa: E731
    return Task(
        name, split(train_idx), split(test_idx), n_classes, vocab=tuple(vocab), params=params.model_dump(), **extra
    )


Builder = Callable[[BaseModel, int], Task]

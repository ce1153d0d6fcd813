"""The training loop: AdamW (or Adam, SGD) with linear warmup, full batch or minibatches, evaluation,
checkpoints, and the interventions around the step (`training.interventions`: Grokfast, ⊥Grad, a fixed norm).

The loop knows nothing of files: it reports evaluation rows and checkpoints to a `Sink` (the store
implements one) and starts from a `TrainState` to resume. Everything random comes from the run's
seeds: the model init (in the model), the minibatch order (a permutation per epoch drawn from
`batch_seed` and the epoch number) and dropout (torch's global generator, seeded here, forked so
the caller's own state is untouched, and saved in every checkpoint). Same config and seed on the
same machine => bit-identical metrics, with or without an interruption in between.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from groklab import runtime
from groklab.config import TrainConfig
from groklab.tasks import Task
from groklab.training import interventions

EVAL_CHUNK = 16_384  # examples per forward pass in evaluation


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it was. A state at step s is taken after
    everything of step s is done (its update, and its evaluation row where one is due, step 0's
    included): resuming from it continues with step s + 1."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]
    elapsed_s: float = 0.0
    streak: int = 0  # consecutive evaluations meeting the early-stop criterion
    ended: str | None = None  # "stopped_early" or "diverged" when this is the run's last state
    hooks: dict[str, torch.Tensor] = field(default_factory=dict)  # the interventions' state (filters, targets)


class Sink(Protocol):
    def on_eval(self, row: dict) -> None: ...
    def on_checkpoint(self, state: TrainState) -> None: ...


@dataclass(frozen=True)
class Probe:
    """A measure computed during training: every `every` steps, fn(model) -> metric columns."""

    every: int
    fn: Callable[[torch.nn.Module], dict]


@dataclass
class Outcome:
    status: str  # "finished" (max_steps), "stopped_early", "interrupted" or "diverged"
    step: int
    elapsed_s: float


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, train_size: int | None = None) -> dict[str, float]:
    """Loss and accuracy on the train split (its first `train_size` examples if given) and the test
    split (no autograd, eval mode, float64 loss)."""
    was_training = model.training
    model.eval()
    row = {}
    for name, split in (("train", task.train), ("test", task.test), *task.splits.items()):
        n = train_size if name == "train" and train_size else len(split)
        scores = (
            _score_lm(model, task, split, n)
            if task.loss == "lm"
            else task.score(
                torch.cat([task.outputs(model, inputs) for inputs in split.inputs[:n].split(EVAL_CHUNK)]),
                split.labels[:n],
            )
        )
        row.update({f"{name}_{key}": value for key, value in scores.items()})
    if task.evaluate is not None:
        row.update(task.evaluate(model))
    model.train(was_training)
    return row


def _score_lm(model: torch.nn.Module, task: Task, split, n: int) -> dict[str, float]:
    """A language model's scores over the first n sequences, in chunks of EVAL_CHUNK tokens: the
    chunks' means weighted by their numbers of (non-padding) target tokens."""
    size = max(1, EVAL_CHUNK // split.inputs.shape[1])
    totals: dict[str, float] = {}
    count = 0
    for inputs, labels in zip(split.inputs[:n].split(size), split.labels[:n].split(size)):
        width = int((labels != -100).any(0).nonzero().max()) + 1
        inputs, labels = inputs[:, :width], labels[:, :width]
        tokens = int((labels != -100).sum())
        for key, value in task.score(task.outputs(model, inputs), labels).items():
            totals[key] = totals.get(key, 0.0) + value * tokens
        count += tokens
    return {key: value / max(count, 1) for key, value in totals.items()}


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of unmapping it: a full-batch step frees and
    re-allocates tens of MB of activations, which glibc would otherwise page-fault back in on
    every step (about 5% of the canonical step on CPU). A process-wide malloc tuning; no-op
    off glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the largest value glibc accepts
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_TOP_PAD, 64 << 20)


def met(value: float, metric: str, threshold: float) -> bool:
    """Early-stop criterion: losses must fall to the threshold, everything else rise to it."""
    return value <= threshold if metric.endswith("_loss") else value >= threshold


class Trainer:
    def __init__(
        self, task: Task, model: torch.nn.Module, cfg: TrainConfig, seed: int = 0, probes: tuple[Probe, ...] = ()
    ):
        """`seed` draws the minibatch order and seeds dropout; the model arrives initialised. `probes`
        add measure columns to the evaluation rows at their own intervals."""
        self.task, self.model, self.cfg, self.seed, self.probes = task, model, cfg, seed, probes
        self.device = next(model.parameters()).device
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = adam(
                model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
            )
        self.hooks = interventions.build_interventions(cfg)  # around the optimizer step
        self.named = list(model.named_parameters())
        keep_freed_memory()
        self.loss_dtype = getattr(torch, cfg.loss_dtype)
        self.step, self.elapsed_s, self.streak = 0, 0.0, 0
        self.ended: str | None = None  # why the run ended before max_steps (early stop, divergence)
        self.started = False  # step 0 evaluated and checkpointed (a loaded state always is)
        self.rng: dict[str, torch.Tensor] | None = None  # generator states to resume from
        self._epoch: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its example order)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> TrainState:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return TrainState(
            self.step,
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            self.optimizer.state_dict(),
            rng,
            self.elapsed_s,
            self.streak,
            self.ended,
            interventions.states(self.hooks),
        )

    def load_state(self, state: TrainState) -> None:
        """Continue after `state`: its step is done, step 0 included (no second step-0 evaluation)."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.step, self.elapsed_s, self.streak, self.rng = state.step, state.elapsed_s, state.streak, state.rng
        self.ended, self.started = state.ended, True
        interventions.load_states(self.hooks, state.hooks)

    # -- the loop ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warmup as in Nanda et al.'s code: factor min(step / warmup, 1), so step 0 has lr 0;
        with decay_steps, then linear decay to 0 at that step (Murty et al.'s code)."""
        warmup, decay = self.cfg.warmup_steps, self.cfg.decay_steps
        factor = min(step / warmup, 1.0) if warmup else 1.0
        if decay is not None and step > warmup:
            factor *= max(0.0, (decay - step) / max(decay - warmup, 1))
        return self.cfg.lr * factor

    def batch_index(self, step: int) -> torch.Tensor | None:
        """The rows of the training split in the batch of `step`: slice i of epoch e's seeded permutation
        (None: the full batch)."""
        split, size = self.task.train, self.cfg.batch_size
        if size == "full" or size >= len(split):
            return None
        epoch, i = divmod(step, math.ceil(len(split) / size))
        if self._epoch[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed << 32) + epoch)
            self._epoch = (epoch, torch.randperm(len(split), generator=gen).to(split.inputs.device))
        return self._epoch[1][i * size : (i + 1) * size]

    def batch(self, step: int, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of `step` (a language model's cut to its non-padding width, unless `trim` is False)."""
        split, idx = self.task.train, self.batch_index(step)
        if idx is None:
            return split.inputs, split.labels
        inputs = split.inputs[idx]
        if self.task.loss == "lm" and trim:  # right padding: drop the columns no sequence of the batch reaches
            labels = split.labels[idx]
            width = int((labels != -100).any(0).nonzero().max()) + 1
            return inputs[:, :width], labels[:, :width]
        if self.task.augment is not None:  # seeded per step, so a resumed run sees the same batches
            inputs = self.task.augment(inputs, torch.Generator().manual_seed((self.seed << 32) + (1 << 31) + step))
        return inputs, split.labels[idx]

    def train_step(self) -> None:
        inputs, labels = self.batch(self.step)
        loss = self.task.objective(self.task.outputs(self.model, inputs), labels, self.loss_dtype, self.cfg.loss_fn)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in self.hooks:
            hook.after_backward(self.named)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self.named)
        self.step += 1

    def run(
        self,
        sink: Sink,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[int, dict | None], None] | None = None,
    ) -> Outcome:
        """Train until max_steps, an early stop, divergence or `should_stop()`. Evaluates at step 0, every
        eval_every steps and wherever a probe is due; checkpoints at step 0, every checkpoint_every
        steps and at the end. A trainer resumed from a state picks up after it: a state taken at the
        end of a run (early stop, divergence) ends it again at once, without training further."""
        cfg = self.cfg
        if self.ended is not None:
            return Outcome(self.ended, self.step, self.elapsed_s)
        devices = [self.device] if self.device.type == "cuda" else []
        # late in training, tiny gradients and Adam moments are denormal floats: slow on Intel CPUs
        flush = runtime.denormals_flushed(cfg.flush_denormal and self.device.type == "cpu")
        with torch.random.fork_rng(devices=devices), flush:
            if self.rng is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self.rng["cpu"])
                if devices and "cuda" in self.rng:
                    torch.cuda.set_rng_state(self.rng["cuda"], self.device)
            self.model.train()
            start = time.perf_counter() - self.elapsed_s
            status = None
            if not self.started:
                for hook in self.hooks:
                    hook.start(self.named)
                status = self._evaluate(sink, on_step)
                self.started, self.ended = True, status
                sink.on_checkpoint(self.state())
            while status is None and self.step < cfg.max_steps:
                self.train_step()
                self.elapsed_s = time.perf_counter() - start
                if self.step == cfg.max_steps or any(self.step % every == 0 for every in self._intervals):
                    status = self._evaluate(sink, on_step)
                elif on_step is not None:
                    on_step(self.step, None)
                self.ended = status  # recorded in the checkpoint below: a resume must not train past it
                if status is None and should_stop():
                    status = "interrupted"
                if status or self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    sink.on_checkpoint(self.state())
            return Outcome(status or "finished", self.step, self.elapsed_s)

    @property
    def _intervals(self) -> list[int]:
        return [self.cfg.eval_every, *(probe.every for probe in self.probes)]

    def _evaluate(self, sink: Sink, on_step, scores: dict | None = None) -> str | None:
        """Evaluate (or take the `scores` computed for it), run the due probes, report the row; the end it
        calls for ("diverged", "stopped_early") or None."""
        scores = evaluate(self.model, self.task, self.cfg.eval_train_size) if scores is None else scores
        row = {"step": self.step, **scores}
        for probe in self.probes:
            if self.step % probe.every == 0 or self.step == self.cfg.max_steps:
                row.update(probe.fn(self.model))
        self.model.train()
        row["elapsed_s"] = round(self.elapsed_s, 3)
        sink.on_eval(row)
        if on_step is not None:
            on_step(self.step, row)
        if not all(math.isfinite(v) for k, v in row.items() if k.endswith("_loss")):
            return "diverged"
        stop = self.cfg.early_stop
        if stop is not None:
            self.streak = self.streak + 1 if met(row[stop.metric], stop.metric, stop.threshold) else 0
            if self.streak >= stop.patience:
                return "stopped_early"
        return None

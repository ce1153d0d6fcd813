"""Many runs as one: a population of members trained together in one process, every weight stacked
with a leading member dimension.

A small model leaves a CPU (and more so a GPU) idle: a step of `hu-mod-add` is ~1.4 ms of arithmetic
in ~5 ms of per-operation overhead. Members that share tensor shapes — the same model and task
sizes — differ in their seeds (init, data split, batch order) and in hyper-parameters that do not
change shapes (lr, weight decay, betas, eps, momentum, init scale). Their weights are stacked
(`torch.func.stack_module_state`) and one functional call of the *same* module (`functional_call`)
is vmapped over the member dimension: one forward and one backward for everyone, and no second
copy of any model. Each member's loss is its own, so the summed loss gives each member exactly its
own gradient.

Every member keeps an ordinary `Trainer` whose module's parameters are views of its slice of the
stack: its batches, lr schedule, evaluation, probes, early stop and checkpoints are the single run's
code. Per member, too: gradient-norm clipping, the optimizer update (torch's own optimizer on the
stack when the members' hyper-parameters agree, elementwise as for one run; a per-member update
with tensor hyper-parameters when they differ), the interventions around the step (Grokfast, ⊥Grad,
the norm constraint: `training.interventions`, stacked — their state per member, checkpointed in
the single run's layout), and the end — a member that stops early or diverges is recorded, leaves
the stack, and its compute stops.

Dropout masks are drawn per member from one generator (vmap's randomness="different"): same
distribution as a single run, not the same masks. Models with BatchNorm (running statistics
updated in place) are not batched.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, stack_module_state, vmap

from groklab import runtime
from groklab.training import interventions
from groklab.training.loop import Outcome, Sink, Trainer, TrainState

EVAL_ROWS = 4096  # examples of all members together in one batched evaluation forward
# hyper-parameters members may differ in (everything else that shapes the loop must agree)
MEMBER_HPARAMS = ("lr", "weight_decay", "betas", "eps", "momentum")


def batchable(model: torch.nn.Module) -> bool:
    """Modules whose forward is a pure function of parameters (no buffers updated in training). Any of the
    trainer's optimizers and interventions train in a population."""
    return not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class Member:
    trainer: Trainer
    sink: Sink


class Population:
    """Train `trainers` (same model architecture and task shapes; see module doc) as one stacked model.

    Each trainer arrives with its model initialised (and its state loaded, to resume); all must be
    at the same step. `run(sinks)` trains until every member has ended."""

    def __init__(self, trainers: Sequence[Trainer]):
        if len({t.step for t in trainers}) != 1:
            raise ValueError("members of a population must be at the same step")
        if not all(batchable(t.model) for t in trainers):
            raise ValueError("a population trains no model with BatchNorm")
        first = trainers[0]
        self.cfg, self.task, self.device = first.cfg, first.task, first.device
        self.trainers = list(trainers)
        self.step = first.step
        self.uniform = _uniform(self.trainers)
        size = self.cfg.batch_size
        self.template = _template(first.model, len(self.task.train) if size == "full" else size)
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None  # the members' training sets, stacked
        self._stack()

    # -- the stack ---------------------------------------------------------------------------
    def _stack(self, states: list[dict] | None = None, hooks: list[dict] | None = None) -> None:
        """Stack the members' parameters (leaf tensors (M, ...)), point each member's module at its slice,
        and build the optimizer and the interventions, their state stacked from the members' (the single
        run's layout; default: the members' trainers')."""
        params, _ = stack_module_state([t.model for t in self.trainers])
        self.params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.named = list(self.params.items())
        self._stack_hooks(hooks)
        for i, t in enumerate(self.trainers):
            for name, p in t.model.named_parameters():
                p.data = self.params[name].data[i]  # a view: the member's module sees its weights
        states = states if states is not None else [t.optimizer.state_dict() for t in self.trainers]
        names = list(self.params)
        slots = {}
        for j, name in enumerate(names):
            per = [s["state"].get(j, {}) for s in states]
            if per[0]:
                slots[name] = {
                    k: (v if k == "step" else torch.stack([m[k] for m in per]))
                    for k, v in per[0].items()
                    if v is not None
                }
        self.slots = slots  # optimizer state per stacked parameter: step, exp_avg, exp_avg_sq / momentum_buffer
        self.optimizer = self._optimizer()

    def _stack_hooks(self, members: list[dict] | None = None) -> None:
        """The interventions, stacked, their state from the members' (default: their trainers')."""
        members = members if members is not None else [interventions.states(t.hooks) for t in self.trainers]
        self.hooks = interventions.build_interventions(self.cfg, stacked=True)
        interventions.load_states(self.hooks, interventions.stack_states(self.hooks, members))

    def _optimizer(self):
        cfg, params = self.cfg, list(self.params.values())
        if self.uniform:  # torch's optimizer, elementwise on the stack: each member's update as alone
            opt = (
                torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
                if cfg.optimizer == "sgd"
                else (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(
                    params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True
                )
            )
            for name, p in self.params.items():
                if name in self.slots:
                    opt.state[p] = dict(self.slots[name])
            self.slots = opt.state  # keyed by parameter from here on
            return opt
        return MemberOptimizer(self.params, self.slots, [t.cfg for t in self.trainers])

    def _slot(self, name: str) -> dict:
        return self.optimizer.state.get(self.params[name], {}) if self.uniform else self.slots.get(name, {})

    def member_optimizer_state(self, i: int) -> dict:
        """Member i's optimizer state in the single run's layout (so its checkpoint reads like one)."""
        own = self.trainers[i].optimizer.state_dict()
        state = {}
        for j, name in enumerate(self.params):
            slot = self._slot(name)
            if slot:
                state[j] = {k: (v.clone() if k == "step" else v[i].clone()) for k, v in slot.items()}
        groups = [{**g, "lr": self.trainers[i].lr_at(max(self.step - 1, 0))} for g in own["param_groups"]]
        return {"state": state, "param_groups": groups}

    def _leave(self, gone: list[int]) -> None:
        """Members `gone` leave the population: slice them out of the stack and the optimizer state."""
        keep = [i for i in range(len(self.trainers)) if i not in gone]
        states = [self.member_optimizer_state(i) for i in keep]
        hooks = [interventions.member_states(self.hooks, i) for i in keep]
        self._train = None
        for i in gone:  # detach the member's module from the stack: its weights stay as they are
            for p in self.trainers[i].model.parameters():
                p.data = p.data.clone()
        self.trainers = [self.trainers[i] for i in keep]
        if self.trainers:
            self.uniform = _uniform(self.trainers)
            self.cfg = self.trainers[0].cfg
            self._stack(states, hooks)

    # -- one step for everyone ---------------------------------------------------------------
    def _batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' batches of this step, stacked: (M, batch, ...), each member's rows as alone. One
        gather from the stacked training sets; a language model's batch is cut to the widest member's
        non-padding width (more padding is ignored), augmented batches are drawn member by member."""
        if self.task.augment is not None:
            batches = [t.batch(self.step) for t in self.trainers]
            return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
        if self._train is None:
            self._train = (
                torch.stack([t.task.train.inputs for t in self.trainers]),
                torch.stack([t.task.train.labels for t in self.trainers]),
            )
        inputs, labels = self._train
        index = [t.batch_index(self.step) for t in self.trainers]
        if index[0] is None:
            return inputs, labels
        rows, index = torch.arange(len(index), device=inputs.device)[:, None], torch.stack(index)  # (M, 1), (M, batch)
        inputs, labels = inputs[rows, index], labels[rows, index]
        if self.task.loss == "lm":
            width = int((labels != -100).flatten(0, 1).any(0).nonzero().max()) + 1
            inputs, labels = inputs[..., :width], labels[..., :width]
        return inputs, labels

    @torch.no_grad()
    def evaluate(self) -> list[dict] | None:
        """Every member's train / test (/ held-out) loss and accuracy in one batched forward per chunk, as
        `groklab.training.evaluate` computes them one member at a time; None where the task evaluates
        itself (language models: decoding) and each member is evaluated alone."""
        task = self.task
        if task.loss == "lm" or task.evaluate is not None:
            return None
        template = self.template
        template.eval()
        rows: list[dict] = [{} for _ in self.trainers]

        def outputs(params, x):
            return task.outputs(lambda *a, **k: functional_call(template, params, a, k), x)

        for name in ("train", "test", *task.splits):
            splits = [
                t.task.train if name == "train" else t.task.test if name == "test" else t.task.splits[name]
                for t in self.trainers
            ]
            n = self.cfg.eval_train_size if name == "train" and self.cfg.eval_train_size else len(splits[0])
            inputs = torch.stack([s.inputs[:n] for s in splits])  # (M, n, ...)
            chunk = max(1, EVAL_ROWS // len(self.trainers))  # examples per member and forward: cache-sized activations
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="There is a performance drop")
                logits = torch.cat([vmap(outputs)(self.params, part) for part in inputs.split(chunk, dim=1)], 1)
            for i, (row, split) in enumerate(zip(rows, splits)):
                row.update({f"{name}_{k}": v for k, v in task.score(logits[i], split.labels[:n]).items()})
        template.train()
        return rows

    def train_step(self) -> None:
        inputs, labels = self._batches()
        template, task, dtype = self.template, self.task, self.trainers[0].loss_dtype

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            model = lambda *args, **kwargs: functional_call(template, params, args, kwargs)  # noqa: E731
            return task.objective(task.outputs(model, x), y, dtype, self.cfg.loss_fn)

        with warnings.catch_warnings():  # vmap runs embedding_bag (the input tables) member by member: measured fastest
            warnings.filterwarnings("ignore", message="There is a performance drop")
            losses = vmap(loss, randomness="different")(self.params, inputs, labels)  # (M,)
        for p in self.params.values():
            p.grad = None
        losses.sum().backward()
        for hook in self.hooks:
            hook.after_backward(self.named)
        clips = [t.cfg.grad_clip for t in self.trainers]
        if clips[0] is not None:
            _clip_per_member([p.grad for p in self.params.values()], torch.tensor(clips, dtype=torch.float64))
        if self.uniform:
            for group in self.optimizer.param_groups:
                group["lr"] = self.trainers[0].lr_at(self.step)
        else:
            self.optimizer.lrs = torch.tensor([t.lr_at(self.step) for t in self.trainers], dtype=torch.float64)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self.named)
        self.step += 1
        for t in self.trainers:
            t.step = self.step

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        sinks: Sequence[Sink],
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[int, dict | None], None] | None = None,
        seed: int = 0,
        rng: dict | None = None,
        on_checkpoints: Callable[[], None] = lambda: None,
    ) -> list[Outcome]:
        """Train every member until it ends; `sinks[i]` receives member i's rows and checkpoints (as a
        single run's sink), and `on_checkpoints()` follows each round of checkpoints (to save them as one).
        Evaluation, probes, early stop, divergence: the member's own Trainer. `seed` seeds the generator
        (dropout) of a fresh population, `rng` restores a resumed one's. Returns each member's outcome."""
        cfg = self.cfg
        members = [Member(t, s) for t, s in zip(self.trainers, sinks)]
        outcomes: dict[int, Outcome] = {}
        for i, m in enumerate(members):  # a member resumed from its final state ends at once
            if m.trainer.ended is not None:
                outcomes[i] = Outcome(m.trainer.ended, m.trainer.step, m.trainer.elapsed_s)
        active = [i for i in range(len(members)) if i not in outcomes]
        if outcomes:
            self._leave(sorted(outcomes))
        devices = [self.device] if self.device.type == "cuda" else []
        flush = runtime.denormals_flushed(cfg.flush_denormal and self.device.type == "cpu")
        with torch.random.fork_rng(devices=devices), flush:
            if rng is None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(rng["cpu"])
            start = time.perf_counter() - members[active[0]].trainer.elapsed_s if active else 0.0
            fresh = [i for i in active if not members[i].trainer.started]
            for i in fresh:  # as a single run starts: each member's interventions on its own weights (views)
                t = members[i].trainer
                for hook in t.hooks:
                    hook.start(t.named)
            if fresh:
                self._stack_hooks()
            for i in fresh:
                t = members[i].trainer
                status = t._evaluate(members[i].sink, on_step)
                t.started, t.ended = True, status
                members[i].sink.on_checkpoint(self._state(i, members))
            on_checkpoints()
            interrupted = False
            while True:
                ended = [i for i in active if members[i].trainer.ended is not None]
                if ended:
                    for i in ended:
                        t = members[i].trainer
                        outcomes[i] = Outcome(t.ended, t.step, t.elapsed_s)
                    self._leave([active.index(i) for i in ended])
                    active = [i for i in active if i not in ended]
                if not active or self.step >= cfg.max_steps or interrupted:
                    break
                self.train_step()
                elapsed = time.perf_counter() - start
                due = self.step == cfg.max_steps or any(
                    self.step % every == 0 for every in members[active[0]].trainer._intervals
                )
                scores = (self.evaluate() if due else None) or [None] * len(active)
                for i, score in zip(active, scores):
                    t = members[i].trainer
                    t.elapsed_s = elapsed
                    if due:
                        t.ended = t._evaluate(members[i].sink, on_step, score)
                if not due and on_step is not None:
                    on_step(self.step, None)
                interrupted = should_stop()
                every = interrupted or self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps
                ending = [i for i in active if members[i].trainer.ended is not None]  # they checkpoint now
                for i in active if every else ending:
                    members[i].sink.on_checkpoint(self._state(i, members))
                if every or ending:
                    on_checkpoints()
            for i in active:
                t = members[i].trainer
                outcomes.setdefault(
                    i,
                    Outcome(
                        "interrupted" if interrupted and self.step < cfg.max_steps else "finished", t.step, t.elapsed_s
                    ),
                )
        return [outcomes[i] for i in range(len(members))]

    def _state(self, i: int, members: list[Member]) -> TrainState:
        """Member i's resume state, in the single run's layout; the population's generator state."""
        t = members[i].trainer
        j = self.trainers.index(t)
        return TrainState(
            t.step,
            {k: v.detach().clone() for k, v in t.model.state_dict().items()},
            self.member_optimizer_state(j),
            {"cpu": torch.get_rng_state()},
            t.elapsed_s,
            t.streak,
            t.ended,
            interventions.member_states(self.hooks, j),
        )


class MemberOptimizer:
    """AdamW (torch.optim.AdamW's decoupled weight decay and bias correction), Adam (its L2 weight decay, in
    the gradient) or SGD (L2 weight decay, momentum) on stacked parameters, with each member's own hyper-parameters as (M, 1, ...) tensors.
    The state per parameter has torch's layout (step, exp_avg, exp_avg_sq / momentum_buffer)."""

    def __init__(self, params: dict[str, torch.Tensor], state: dict[str, dict], cfgs: list):
        self.params, self.state, self.kind = params, state, cfgs[0].optimizer
        column = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
        self.wd = column([c.weight_decay for c in cfgs])
        self.beta1, self.beta2 = column([c.betas[0] for c in cfgs]), column([c.betas[1] for c in cfgs])
        self.eps, self.momentum = column([c.eps for c in cfgs]), column([c.momentum for c in cfgs])
        self.lrs = column([c.lr for c in cfgs])

    @torch.no_grad()
    def step(self) -> None:
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.ndim - 1)
            col = lambda v, p=p, shape=shape: v.to(p.dtype).view(shape)  # noqa: E731
            lr, wd, g = col(self.lrs), col(self.wd), p.grad
            slot = self.state.setdefault(name, {})
            if self.kind == "sgd":
                g = g + wd * p
                if bool((self.momentum > 0).any()):
                    buf = slot.get("momentum_buffer")
                    buf = g.clone() if buf is None else buf.mul_(col(self.momentum)).add_(g)
                    slot["momentum_buffer"] = buf
                    g = torch.where(col(self.momentum) > 0, buf, g)
                p.sub_(lr * g)
                continue
            if not slot:
                slot.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            slot["step"] += 1
            step = float(slot["step"])
            b1, b2 = col(self.beta1), col(self.beta2)
            if self.kind == "adam":
                g = g + wd * p
            else:
                p.mul_(1 - lr * wd)
            slot["exp_avg"].lerp_(g, 1 - b1)
            slot["exp_avg_sq"].mul_(b2).add_((1 - b2) * g * g)
            denom = (slot["exp_avg_sq"].sqrt() / (1 - b2**step).sqrt()).add_(col(self.eps))
            p.sub_(lr / (1 - b1**step) * slot["exp_avg"] / denom)


def _uniform(trainers: Sequence[Trainer]) -> bool:
    """Whether the members share every hyper-parameter they may differ in (then torch's optimizer serves)."""
    return all(getattr(t.cfg, k) == getattr(trainers[0].cfg, k) for t in trainers for k in MEMBER_HPARAMS)


def _clip_per_member(grads: list[torch.Tensor], max_norm: torch.Tensor) -> None:
    """torch.nn.utils.clip_grad_norm_ per member: each member's global gradient norm over all its parameters."""
    norms = torch.stack([g.flatten(1).double().pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (M,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view((-1,) + (1,) * (g.ndim - 1)))


def _template(model: torch.nn.Module, rows: int) -> torch.nn.Module:
    """The module whose forward every member runs (functional_call over the members' weights); its own
    weights are never used. A transformer's input tables (one row per (position, token) pair, see
    models/transformer.py) pay under vmap only when a batch has more examples than there are pairs:
    vmap runs their embedding_bag member by member. Measured at 40 members: x+y mod 31 with its full
    batch of 480 (96 pairs), 161 ms per step with tables vs 240 ms without; hu-mod-add's minibatches of
    256 (342 pairs), 171 ms vs 134 ms. Both paths are exact."""
    import copy

    template = copy.deepcopy(model)
    cfg = getattr(template, "cfg", None)
    if hasattr(template, "_hooked") and rows <= cfg.n_ctx * cfg.d_vocab:
        template._hooked = 1  # the plain path
    return template

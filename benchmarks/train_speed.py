"""Training speed of the canonical run (nanda-mod-add) on this machine.

Prints ms per optimizer step of groklab's trainer beside a baseline, measured in the same process,
interleaved, that does each step what the released code of Nanda et al. 2023 does
(progress-measures-paper `transformers.py`): the full forward over all 3 positions, the test loss
computed with autograd every step, labels rebuilt in Python from the pairs. Also prints the time
of the dense MLP alone at the scored position (the part no re-association removes), the cost of
the live progress measures relative to the training steps between two measurements, and, with
`--grok`, runs the whole preset (live measures included) and reports the step and wall time at
which test acc reached 99%. With `--late N`, also trains N steps (train loss near 1e-7 by ~6k) and
times steps from that memorized state with denormals flushed to zero (groklab's training) and not
(torch's default), interleaved: the slowdown late in training that Intel CPUs show.

    python benchmarks/train_speed.py [--steps 40] [--rounds 5] [--grok] [--late 6000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import groklab
from groklab import runtime
from groklab.experiment import resolve
from groklab.measures import make_measures
from groklab.models import build_model
from groklab.training import Trainer


class ReleasedCodeTransformer(torch.nn.Module):
    """Nanda et al.'s model as written in their `transformers.py` (paper weight layout, einsums
    over every position, -1e10 masking), without hooks."""

    def __init__(self, d_vocab=114, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=3):
        super().__init__()
        r = lambda *s, fan=d_model: torch.nn.Parameter(torch.randn(*s) / math.sqrt(fan))  # noqa: E731
        self.W_E, self.W_pos = r(d_model, d_vocab), r(n_ctx, d_model)
        self.W_K, self.W_Q, self.W_V = (
            r(n_heads, d_head, d_model),
            r(n_heads, d_head, d_model),
            r(n_heads, d_head, d_model),
        )
        self.W_O = r(d_model, d_head * n_heads)
        self.W_in, self.b_in = r(d_mlp, d_model), torch.nn.Parameter(torch.zeros(d_mlp))
        self.W_out, self.b_out = r(d_model, d_mlp), torch.nn.Parameter(torch.zeros(d_model))
        self.W_U = r(d_model, d_vocab, fan=d_vocab)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx)))
        self.d_head = d_head

    def forward(self, x):
        x = torch.einsum("dbp->bpd", self.W_E[:, x]) + self.W_pos[: x.shape[-1]]
        k = torch.einsum("ihd,bpd->biph", self.W_K, x)
        q = torch.einsum("ihd,bpd->biph", self.W_Q, x)
        v = torch.einsum("ihd,bpd->biph", self.W_V, x)
        scores = torch.einsum("biph,biqh->biqp", k, q)
        n = x.shape[-2]
        scores = torch.tril(scores) - 1e10 * (1 - self.mask[:n, :n])
        attn = F.softmax(scores / math.sqrt(self.d_head), dim=-1)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z = z.permute(0, 2, 1, 3).reshape(z.shape[0], n, -1)  # rearrange 'b i q h -> b q (i h)'
        x = x + torch.einsum("df,bqf->bqd", self.W_O, z)
        post = F.relu(torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in)
        x = x + torch.einsum("dm,bpm->bpd", self.W_out, post) + self.b_out
        return x @ self.W_U


def released_code_step(model, optimizer, scheduler, train, test, p):
    def full_loss(data):
        logits = model(data)[:, -1]
        labels = torch.tensor([(i + j) % p for i, j, _ in data.tolist()])
        logprobs = F.log_softmax(logits.to(torch.float64), dim=-1)
        return -torch.gather(logprobs, index=labels[:, None], dim=-1).mean()

    train_loss = full_loss(train)
    test_loss = full_loss(test)  # with autograd, as in the released loop
    train_loss.item(), test_loss.item()
    train_loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def mlp_floor(trainer):
    """Forward + backward of the last block's MLP and the unembedding at the scored position:
    dense (batch x 128) @ (128 x 512) and (batch x 512) @ (512 x 128) work that stays in any exact
    formulation of the step."""
    model = trainer.model
    mlp, W_U = model.blocks[0].mlp, model.unembed.W_U
    resid = torch.randn(len(trainer.task.train), 1, 128, requires_grad=True)
    out = (resid + mlp(resid)) @ W_U
    out.sum().backward()


def late_steps(n: int, steps: int, rounds: int) -> None:
    """Step time from the canonical run's state after n steps, denormals flushed (as groklab trains) or not."""
    prepared = resolve(groklab.load_preset("nanda-mod-add"))
    cfg = prepared.config
    trainer = Trainer(prepared.task, build_model(prepared.model, cfg.resolved_model_seed), cfg.train, seed=0)
    start = time.perf_counter()
    with runtime.denormals_flushed():
        early = timed(trainer.train_step, 20)
        while trainer.step < n:
            trainer.train_step()
    took = time.perf_counter() - start
    with torch.no_grad():
        loss = trainer.task.objective(
            trainer.task.outputs(trainer.model, trainer.task.train.inputs), trainer.task.train.labels, torch.float64
        ).item()
    flushed, plain = [], []
    for _ in range(rounds):
        with runtime.denormals_flushed():
            flushed.append(timed(trainer.train_step, steps))
        plain.append(timed(trainer.train_step, steps))
    tiny = torch.finfo(torch.float32).tiny
    moments = [v for state in trainer.optimizer.state.values() for k, v in state.items() if k.startswith("exp_avg")]
    denormal = sum(int(((m != 0) & (m.abs() < tiny)).sum()) for m in moments) / sum(m.numel() for m in moments)
    f, p = statistics.median(flushed), statistics.median(plain)
    print(
        f"late training (after {n} steps, {took:.0f} s, train loss {loss:.2e}; steps 0-20: {early:.1f} ms/step): "
        f"{f:.1f} ms/step with denormals flushed, {p:.1f} ms/step without (x{p / f:.2f}); "
        f"{denormal:.1%} of Adam's moments denormal without flushing"
    )


def timed(fn, steps):
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--grok", action="store_true", help="also run the canonical preset to test acc >= 99%%")
    parser.add_argument("--late", type=int, default=0, metavar="N", help="also time steps after N training steps")
    args = parser.parse_args()
    print(f"CPU: {runtime.cpu_name()}; torch threads {torch.get_num_threads()}")

    prepared = resolve(groklab.load_preset("nanda-mod-add"))
    cfg = prepared.config
    trainer = Trainer(prepared.task, build_model(prepared.model, cfg.resolved_model_seed), cfg.train, seed=0)
    baseline = ReleasedCodeTransformer()
    b_opt = torch.optim.AdamW(baseline.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    b_sched = torch.optim.lr_scheduler.LambdaLR(b_opt, lambda step: min(step / 10, 1))
    task = prepared.task
    b_step = lambda: released_code_step(baseline, b_opt, b_sched, task.train.inputs, task.test.inputs, 113)  # noqa: E731
    for fn in (trainer.train_step, b_step, lambda: mlp_floor(trainer)):  # warm up
        timed(fn, 3)
    ours, theirs, floor = [], [], []
    for _ in range(args.rounds):
        ours.append(timed(trainer.train_step, args.steps))
        theirs.append(timed(b_step, max(2, args.steps // 10)))
        floor.append(timed(lambda: mlp_floor(trainer), args.steps))
    measure = make_measures(cfg.measures, task)
    live = [timed(lambda: measure(trainer.model), 1) for _ in range(args.rounds)]
    o, t, f = statistics.median(ours), statistics.median(theirs), statistics.median(floor)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, train batch {len(task.train)}")
    print(f"groklab step (nanda-mod-add):      {o:8.1f} ms  (rounds: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"released-code algorithm baseline:  {t:8.1f} ms  (rounds: {', '.join(f'{x:.1f}' for x in theirs)})")
    print(f"speed-up vs baseline:              {t / o:8.1f} x")
    print(f"dense MLP + unembed alone (floor): {f:8.1f} ms  = {f / o:.0%} of the groklab step")
    m = statistics.median(live)
    print(
        f"live measures ({', '.join(cfg.measures.names)}): {m:8.1f} ms per measurement, every {cfg.measures.every} "
        f"steps = {m / (cfg.measures.every * o):.1%} on top of the training steps"
    )

    if args.late:
        late_steps(args.late, args.steps, args.rounds)

    if args.grok:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = groklab.run(groklab.load_preset("nanda-mod-add"), f"{tmp}/run")
            total = time.perf_counter() - start
            s = run.summary
            print(
                f"canonical run: status {s['status']}, train acc >= 99% at step {s['step_train_acc_99']}, "
                f"test acc >= 99% at step {s['step_test_acc_99']} after {s['elapsed_s_test_acc_99']:.1f} s "
                f"(training ended at step {s['last_step']} after {s['elapsed_s']:.1f} s, {s['steps_per_s']} steps/s; "
                f"{total:.1f} s with the final key-frequency pass over every checkpoint)"
            )
            print(
                f"phases: memorization ends {s.get('memorization_end')}, circuit formation ends "
                f"{s.get('circuit_formation_end')}, cleanup ends {s.get('cleanup_end')} {s.get('phase_note', '')}"
            )
            print(
                f"key frequencies {s.get('final_key_freqs')}; {s.get('final_frac_neurons_explained', 0):.1%} of neurons "
                f"explained > 85% by one frequency; 3-D Fourier fit explains {s.get('final_fourier_mult_fve', 0):.1%} "
                f"of the logit variance; evidence: "
                + ", ".join(
                    f"{k} {s[k]:.3g}"
                    for k in (
                        "excluded_over_train",
                        "restricted_lead_steps",
                        "gini_W_E_speedup",
                        "gini_W_L_speedup",
                        "sum_sq_weights_drop",
                    )
                    if s.get(k) is not None
                )
            )
            failures = groklab.dynamics.check_outcome(s, run.config.outcome)
            print("expected outcome:", "met" if not failures else "NOT met: " + "; ".join(failures))


if __name__ == "__main__":
    main()

"""The groklab transformer: one decoder-only transformer for every task, configured, not copied.

Economy after nanoGPT (karpathy/nanoGPT `model.py`); weight names, shapes and activation names
after TransformerLens (`embed.W_E`, `blocks.0.attn.W_Q`, `blocks.0.mlp.hook_post`, ...), so every
activation is addressable with `run_with_cache`. The defaults are the model of Nanda et al. 2023
(progress-measures paper, §3 and App. A; `../shared/spec/progress-measures.md` §1): 1 layer, d_model
128, 4 heads of 32, d_mlp 512, ReLU, no LayerNorm, biases in the MLP only, Nanda's init scales.

Two exact shortcuts make small-vocabulary training fast; both give the same logits as the plain
forward (tests/test_model.py):
- `at`: only the scored positions leave the last block. Its queries, MLP and the unembedding run
  at those positions only; keys and values still see every position.
- input tables: the first block's input, W_E[token] + W_pos[position], depends on (position,
  token) only. When there are no more tokens than sequences in the batch and at most 1024
  (position, token) pairs (Nanda's full batch and Power's minibatches of 512 qualify, a language
  model's batch of 8 long sequences does not), the first attention layer computes its scores and
  value-output vectors once per pair and gathers them per input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

Bias = Literal["attn", "mlp", "unembed"]


class TransformerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    d_vocab: PositiveInt  # input tokens (set from the task)
    n_ctx: PositiveInt  # sequence length (set from the task)
    d_vocab_out: PositiveInt | None = None  # output classes; None: d_vocab
    n_layers: PositiveInt = 1
    d_model: PositiveInt = 128
    n_heads: PositiveInt = 4
    d_head: PositiveInt = 32
    d_mlp: PositiveInt = 512
    act: Literal["relu", "gelu"] = "relu"
    normalization: Literal["none", "pre", "post"] = "none"
    positional: Literal["learned", "sinusoidal"] = "learned"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    biases: frozenset[Bias] = frozenset({"mlp"})
    init: Literal["nanda", "gpt2", "pytorch", "xavier"] = "nanda"
    bias_init: Literal["zero", "pytorch"] = (
        "zero"  # "pytorch": nn.Linear's U(+-1/sqrt(fan_in)) (Murty's released model)
    )
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani; Murty et al.)
    init_scale: float = Field(1.0, gt=0.0)  # multiplies every initial weight (Omnigrok's alpha)

    @property
    def n_outputs(self) -> int:
        return self.d_vocab_out or self.d_vocab


class HookPoint(nn.Module):
    """An identity with a name (its module path): `run_with_cache` and `hooks` attach here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


def _bias(on: bool, *shape: int) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(*shape)) if on else None


def _add(x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x if b is None else x + b


def _pair_rows(tokens: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """tokens (batch, pos) -> their rows in a flattened (pos, d_vocab, ...) table of (position, token) pairs."""
    return tokens + torch.arange(tokens.shape[1], device=tokens.device) * n_vocab


class LayerNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, eps=1e-5))


class Dropout(nn.Module):
    """nn.Dropout with a cheaper mask on CPU, where torch's bernoulli_ is slow (a lab-scale LM step is
    x1.28 faster with this one, x1.27 in a batch of 5; benchmarks/lm_step_speed.py, docs/results/speed.md): 15 random bits per element, four
    elements per 63-bit draw of the global generator (so seeded and resumable like torch's); an element is
    dropped with probability round(p * 2^15) / 2^15 (within 2e-5 of p) and the kept ones are scaled to keep
    the expectation, x times a float mask of 0 and 1 / (1 - p) (x times a bool mask, then the scale, gives the
    same numbers at half the speed: a mixed-type product; made in place from the bits, as int16, the mask
    is faster still than from a bool). Under torch.func.vmap (a population of runs,
    groklab.training.population) the draws are shaped like x, four elements of its last dimension to a draw,
    so that vmap's randomness="different" gives each member its own (not the mask the same seed draws alone:
    the layouts differ). On CUDA: F.dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        cut = round(self.p * 32768)
        if torch._C._functorch.is_functorch_wrapped_tensor(x):  # a member of a batch, under vmap
            n = x.shape[-1]
            words = torch.empty_like(x[..., : (n + 3) // 4], dtype=torch.int64, memory_format=torch.contiguous_format)
            keep = words.random_().view(torch.int16)[..., :n].bitwise_and_(0x7FFF) >= cut  # ge_: no batching rule
        else:
            n = x.numel()
            bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
            keep = bits.bitwise_and_(0x7FFF).ge_(cut)  # in place on bits we own: 0 or 1 as int16, faster than a bool
        return x * keep.to(x.dtype).mul_(32768 / (32768 - cut))  # x times 0 or 1 / (1 - p)


class KVCache:
    """Keys and values of every position fed so far, per layer: feed a sequence in pieces,
    `model(piece, cache=cache)`, and get the logits feeding it whole would give (greedy decoding)."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[1]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' k, v (batch, pos, head, d_head); return every position's."""
        if self.layers[layer] is not None:
            k, v = (torch.cat(pair, 1) for pair in zip(self.layers[layer], (k, v)))
        self.layers[layer] = (k, v)
        return k, v

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished sequences leave the batch)."""
        self.layers = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.layers]


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        H, D, E = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = _param(H, D, E), _param(H, D, E), _param(H, D, E)
        self.W_O = _param(H, E, D)
        on = "attn" in cfg.biases
        self.b_Q, self.b_K, self.b_V, self.b_O = _bias(on, H, E), _bias(on, H, E), _bias(on, H, E), _bias(on, D)
        self.dropout = Dropout(cfg.dropout)
        self.hook_q, self.hook_k, self.hook_v, self.hook_z = HookPoint(), HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        q: slice,
        tokens: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        kv: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        """x (batch, pos, d_model) -> the output at the query positions x[:, q]: (batch, n_q, d_model).

        With `tokens` (batch, pos), x is instead the table (pos, d_vocab, d_model) of the input for
        every (position, token) pair; the input at (b, p) is x[p, tokens[b, p]] (see `_from_table`).
        key_mask (batch, pos, pos) bool, True: that query may not attend to that key (plain path only).
        kv = (cache, layer): x continues the cached positions, whose keys and values are attended too.
        """
        n_pos = (x if tokens is None else tokens).shape[1]
        if tokens is not None:
            positions = torch.arange(n_pos, device=x.device)
            return self._from_table(x, q, tokens, positions > positions[q][:, None])
        q_, k, v = (
            self.hook_q(self._project(x[:, q], self.W_Q, self.b_Q)),  # (batch, q, head, d_head)
            self.hook_k(self._project(x, self.W_K, self.b_K)),  # (batch, pos, head, d_head)
            self.hook_v(self._project(x, self.W_V, self.b_V)),
        )
        if kv is not None:
            k, v = kv[0].extend(kv[1], k, v)  # (batch, past + pos, head, d_head)
        positions = torch.arange(k.shape[1], device=x.device)
        future = positions > positions[k.shape[1] - n_pos :][q][:, None]  # (q, keys): the causal mask
        blocked = future if key_mask is None else future | key_mask[:, None, q]  # (q, pos) or (batch, 1, q, pos)
        scores = torch.einsum("bqhe,bkhe->bhqk", q_, k) / math.sqrt(q_.shape[-1])  # (batch, head, q, pos)
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores.masked_fill(blocked, -torch.inf)), -1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", self.dropout(pattern), v))  # (batch, q, head, d_head)
        return _add(torch.einsum("bqhe,hed->bqd", z, self.W_O), self.b_O)

    @staticmethod
    def _project(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _add(torch.einsum("...d,hde->...he", x, W), b)  # (..., d_model) -> (..., head, d_head)

    def _from_table(self, x: torch.Tensor, q: slice, tokens: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """The same attention, computed once per (position, token) pair and gathered per input.
        Exact; cheap when pairs are few (no dropout, no hooks: the plain path serves those)."""
        keys, queries = x.flatten(0, 1), x[q].flatten(0, 1)  # (pairs, d_model), (q pairs, d_model)
        rows, q_rows = _pair_rows(tokens, x.shape[1]), _pair_rows(tokens[:, q], x.shape[1])  # (batch, pos), (batch, q)
        q_tab, k_tab = self._project(queries, self.W_Q, self.b_Q), self._project(keys, self.W_K, self.b_K)
        s_tab = torch.einsum("nhe,mhe->nmh", q_tab, k_tab).flatten(0, 1) / math.sqrt(q_tab.shape[-1])
        scores = F.embedding(q_rows[:, :, None] * len(keys) + rows[:, None, :], s_tab)  # (batch, q, pos, head)
        pattern = torch.softmax(scores.masked_fill(future[..., None], -torch.inf), -2)
        # the output is a pattern-weighted sum of per-pair value-output vectors (v W_O): one embedding bag
        vo_tab = torch.einsum(
            "nhe,hed->nhd", self._project(keys, self.W_V, self.b_V), self.W_O
        )  # (pairs, head, d_model)
        heads = torch.arange(vo_tab.shape[1], device=x.device)
        bags = (rows[:, None, :, None] * len(heads) + heads).expand(
            pattern.shape
        )  # (batch, q, pos, head): row of vo_tab
        out = F.embedding_bag(
            bags.flatten(2).flatten(0, 1),
            vo_tab.flatten(0, 1),
            per_sample_weights=pattern.flatten(2).flatten(0, 1),
            mode="sum",
        )  # (batch * q, d_model)
        return _add(out.unflatten(0, pattern.shape[:2]), self.b_O)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in, self.W_out = _param(cfg.d_model, cfg.d_mlp), _param(cfg.d_mlp, cfg.d_model)
        on = "mlp" in cfg.biases
        self.b_in, self.b_out = _bias(on, cfg.d_mlp), _bias(on, cfg.d_model)
        self.act = {"relu": F.relu, "gelu": F.gelu}[cfg.act]
        self.dropout = Dropout(cfg.dropout)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post = self.hook_post(self.act(self.hook_pre(F.linear(x, self.W_in.T, self.b_in))))  # (batch, q, d_mlp)
        return F.linear(self.dropout(post), self.W_out.T, self.b_out)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm = cfg.normalization
        norm = lambda: LayerNorm(cfg.d_model) if self.norm != "none" else nn.Identity()  # noqa: E731
        self.ln1, self.attn, self.ln2, self.mlp = norm(), Attention(cfg), norm(), MLP(cfg)
        self.dropout = Dropout(cfg.dropout)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(
        self,
        x: torch.Tensor | None,
        q: slice,
        table: tuple | None = None,
        key_mask: torch.Tensor | None = None,
        kv: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        """x (batch, pos, d_model) -> (batch, n_q, d_model) at positions x[:, q].
        Or x=None and `table` = (tokens, X) with X (pos, d_vocab, d_model): the input at (b, p) is
        X[p, tokens[b, p]], used in table form (see module doc). key_mask, kv: see `Transformer.forward`."""
        pre = self.norm == "pre"
        if table is None:
            x = self.hook_resid_pre(x)
            attn_out, resid = self.attn(self.ln1(x) if pre else x, q, key_mask=key_mask, kv=kv), x[:, q]
        else:
            tokens, X = table
            attn_out = self.attn(self.ln1(X) if pre else X, q, tokens)
            resid = F.embedding(_pair_rows(tokens[:, q], X.shape[1]), X[q].flatten(0, 1))  # (batch, q, d_model)
        x = resid + self.hook_attn_out(self.dropout(attn_out))
        x = self.hook_resid_mid(self.ln1(x) if self.norm == "post" else x)
        x = x + self.hook_mlp_out(self.dropout(self.mlp(self.ln2(x) if pre else x)))
        return self.hook_resid_post(self.ln2(x) if self.norm == "post" else x)


TABLE_BLIND = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.", "blocks.0.attn.hook_")


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Module()
        self.embed.W_E = _param(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Module()
        if cfg.positional == "learned":
            self.pos_embed.W_pos = _param(cfg.n_ctx, cfg.d_model)
        else:
            self.pos_embed.register_buffer("W_pos", sinusoidal(cfg.n_ctx, cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.normalization == "pre" else nn.Identity()
        self.unembed = nn.Module()
        self.unembed.W_U = _param(cfg.d_model, cfg.n_outputs)
        self.unembed.b_U = _bias("unembed" in cfg.biases, cfg.n_outputs)
        self.dropout = Dropout(cfg.dropout)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self._hooked = 0
        init_weights(self, torch.Generator().manual_seed(seed))

    def forward(
        self,
        tokens: torch.Tensor,
        at: int | slice | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """tokens (batch, pos) -> logits (batch, pos, d_vocab_out); with an int `at`, the logits at
        that position only (batch, d_vocab_out); with a slice, at those positions.

        key_mask: bool (batch, pos_q, pos_k), or (batch, pos_k) for every query; True = that query may
        NOT attend to that key, at every layer, on top of the causal mask (tree projections block the
        keys outside a span). Each query must keep a key (e.g. SOS). Runs the plain path (no tables).

        cache: tokens continue the sequences whose keys and values it holds (positions cache.length on),
        and their own are added to it (`KVCache`; plain path, no key_mask)."""
        n_pos, start = tokens.shape[1], 0 if cache is None else cache.length
        if cache is not None and key_mask is not None:
            raise ValueError("key_mask and cache cannot be combined")
        if key_mask is not None:
            key_mask = key_mask[:, None].expand(-1, n_pos, -1) if key_mask.ndim == 2 else key_mask  # (batch, pos, pos)
        q = slice(at, at + 1 or None) if isinstance(at, int) else at or slice(None)
        W_E, W_pos = self.embed.W_E, self.pos_embed.W_pos[start : start + n_pos]
        x, table = None, None
        if self.cfg.embed_scale:
            W_E = W_E * math.sqrt(self.cfg.d_model)
        tabulate = key_mask is None and cache is None and len(W_E) <= len(tokens) and n_pos * len(W_E) <= 1024
        if tabulate and not self._hooked and not (self.training and self.cfg.dropout):
            table = (tokens, W_pos[:, None] + W_E[None])  # X: (pos, d_vocab, d_model), every (position, token) input
        else:
            x = self.dropout(
                self.hook_embed(F.embedding(tokens, W_E)) + self.hook_pos_embed(W_pos)
            )  # (batch, pos, d_model)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                q if i == len(self.blocks) - 1 else slice(None),
                table if i == 0 else None,
                key_mask,
                None if cache is None else (cache, i),
            )
        logits = F.linear(self.ln_final(x), self.unembed.W_U.T, self.unembed.b_U)  # (batch, q, d_vocab_out)
        return logits[:, 0] if isinstance(at, int) else logits

    def new_cache(self) -> KVCache:
        """An empty key-value cache for `forward(..., cache=)` (incremental decoding)."""
        return KVCache(len(self.blocks))

    @contextlib.contextmanager
    def hooks(self, fns: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
        """Run with functions attached to hook points by name; a function that returns a tensor
        replaces the activation (patching), one that returns None only observes."""
        points = dict(self.named_modules())
        unknown = [name for name in fns if not isinstance(points.get(name), HookPoint)]
        if unknown:
            raise KeyError(f"no hook point {unknown[0]!r}; see model.hook_names()")
        handles = [points[name].register_forward_hook(lambda m, i, out, fn=fn: fn(out)) for name, fn in fns.items()]
        blind = any(name.startswith(TABLE_BLIND) for name in fns)  # points the table path does not pass
        self._hooked += blind
        try:
            yield
        finally:
            self._hooked -= blind
            for handle in handles:
                handle.remove()

    def run_with_cache(
        self, tokens: torch.Tensor, at: int | slice | None = None, names: list[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and every named activation (or those in `names`), as TransformerLens' run_with_cache."""
        cache: dict[str, torch.Tensor] = {}
        store = lambda name: lambda t: cache.__setitem__(name, t.detach())  # noqa: E731
        with self.hooks({name: store(name) for name in (names or self.hook_names())}):
            logits = self(tokens, at)
        return logits, cache

    def hook_names(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, HookPoint)]


def sinusoidal(n_ctx: int, d_model: int) -> torch.Tensor:
    """Vaswani et al. 2017 positional encoding (n_ctx, d_model)."""
    pos = torch.arange(n_ctx)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10_000.0) / d_model))
    pe = torch.zeros(n_ctx, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : d_model // 2]
    return pe


@torch.no_grad()
def init_weights(model: Transformer, gen: torch.Generator) -> None:
    """Initialise every weight from `gen`, then multiply by init_scale; biases start at zero, or with
    bias_init "pytorch" at torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from `gen`
    after every weight (so the weights are the same either way), unscaled: Murty et al.'s released model
    re-initializes only its weight matrices and keeps these (spec structural-grokking.md §3).

    - "nanda": N(0, 1) / sqrt(fan), with fan = d_model for every matrix except W_U (d_vocab),
      as in Nanda et al.'s released code (spec §1; W_out is / sqrt(d_model), not / sqrt(d_mlp)).
    - "gpt2": N(0, 0.02^2), with W_O and W_out scaled by 1 / sqrt(2 n_layers) (nanoGPT).
    - "pytorch": torch.nn's defaults, as in Power et al.'s code: embeddings N(0, 1), every other
      matrix U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with its logical fan-in (d_model; n_heads * d_head
      for W_O; d_mlp for W_out).
    - "xavier": Xavier-uniform U(-b, b), b = gain sqrt(6 / (fan_in + fan_out)) over each matrix's
      logical shape (all heads together), gain sqrt(2) for W_in (ReLU) and 1 elsewhere, as in Murty
      et al.'s TransformerLM (spec structural-grokking.md §3).
    """
    cfg = model.cfg
    fan_in = {"W_O": cfg.n_heads * cfg.d_head, "W_out": cfg.d_mlp}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if not leaf.startswith("W_"):
            continue
        if cfg.init == "xavier":
            fans = {
                "W_E": cfg.d_vocab + cfg.d_model,
                "W_pos": cfg.n_ctx + cfg.d_model,
                "W_U": cfg.d_model + cfg.n_outputs,
                "W_in": cfg.d_model + cfg.d_mlp,
                "W_out": cfg.d_mlp + cfg.d_model,
            }.get(leaf, cfg.d_model + cfg.n_heads * cfg.d_head)
            bound = (math.sqrt(2) if leaf == "W_in" else 1.0) * math.sqrt(6 / fans)
            p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
        elif cfg.init == "pytorch":
            if leaf in ("W_E", "W_pos"):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                bound = 1 / math.sqrt(fan_in.get(leaf, cfg.d_model))
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
        elif cfg.init == "nanda":
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(cfg.d_vocab if leaf == "W_U" else cfg.d_model))
        else:
            p.copy_(
                torch.randn(p.shape, generator=gen)
                * 0.02
                / (math.sqrt(2 * cfg.n_layers) if leaf in ("W_O", "W_out") else 1)
            )
        p.mul_(cfg.init_scale)
    if cfg.bias_init == "pytorch":
        bias_fan_in = {"b_O": cfg.n_heads * cfg.d_head, "b_out": cfg.d_mlp}  # else d_model (b_Q/K/V, b_in, b_U)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_"):
                bound = 1 / math.sqrt(bias_fan_in.get(leaf, cfg.d_model))
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)

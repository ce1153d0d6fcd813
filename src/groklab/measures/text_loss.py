"""Held-out language-modelling loss of a checkpoint on a tokenized text: the `text_loss` column of imported
LM checkpoint series (`groklab import hf --eval-text FILE`).

Hu et al. 2023 (spec training-maps.md §2.4, §5.2) read MultiBERTs' convergence off a masked-LM loss
(`get_lm_loss_hf_transformer` in their released `src/metrics.py`: the mean over batches of the model's MLM
loss). groklab's variant: the mean over all scored tokens, with the masked positions drawn once from a fixed
seed so that every checkpoint is scored on the same positions (the released code re-drew them per batch
with the collator's 80/10/10 replacement; here every chosen position becomes the mask token).

`model(input_ids=..., attention_mask=...)` must return logits (batch, pos, vocab), or an object with a
`.logits` attribute (any Hugging Face *ForCausalLM / *ForMaskedLM model).
"""

from __future__ import annotations

import torch

BATCH = 8  # blocks per forward pass


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return (out.logits if hasattr(out, "logits") else out).double()  # (batch, pos, vocab)


def token_blocks(ids: list[int], length: int, max_tokens: int | None = None) -> torch.Tensor:
    """The first `max_tokens` token ids cut into whole blocks of `length`, (n_blocks, length); the tail that
    fills no whole block is dropped, unless the text is shorter than one block (then one shorter block)."""
    ids = ids[:max_tokens] if max_tokens else ids
    n = len(ids) // length
    if n == 0:
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


@torch.no_grad()
def causal_lm_loss(model, blocks: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) over every position but each block's first, (n_blocks, length)."""
    total, count = 0.0, 0
    for batch in blocks.split(BATCH):
        logits = _logits(model, batch)[:, :-1]  # (batch, pos - 1, vocab): predicts tokens 1..
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + batch[:, 1:].numel()
    return total / count if count else float("nan")


def mask_positions(blocks: torch.Tensor, fraction: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Which positions of (n_blocks, length) are masked: each with probability `fraction`, from a generator
    seeded with `seed` (the same positions at every checkpoint), at least one per block."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(blocks.shape, generator=generator) < fraction
    first = torch.randint(blocks.shape[1], (blocks.shape[0],), generator=generator)
    chosen[torch.arange(blocks.shape[0]), first] = True
    return chosen


@torch.no_grad()
def masked_lm_loss(
    model, blocks: torch.Tensor, mask_token_id: int, cls_id: int | None = None, sep_id: int | None = None, seed: int = 0
) -> float:
    """Mean masked-LM cross-entropy (nats) at 15% of the positions of (n_blocks, length) (`mask_positions`),
    each replaced by `mask_token_id`; every block is wrapped in `cls_id` ... `sep_id` where given (BERT's
    [CLS] and [SEP], never masked)."""
    masked = mask_positions(blocks, seed=seed)
    inputs = blocks.masked_fill(masked, mask_token_id)
    ends = [torch.full((len(blocks), 1), i, dtype=torch.long) for i in (cls_id, sep_id)]
    if cls_id is not None:
        inputs = torch.cat([ends[0], inputs], 1)
    if sep_id is not None:
        inputs = torch.cat([inputs, ends[1]], 1)
    offset = int(cls_id is not None)
    total, count = 0.0, 0
    for rows in torch.arange(len(blocks)).split(BATCH):
        logits = _logits(model, inputs[rows])[:, offset : offset + blocks.shape[1]]  # (batch, length, vocab)
        where = masked[rows]
        loss = torch.nn.functional.cross_entropy(logits[where], blocks[rows][where], reduction="sum")
        total, count = total + loss.item(), count + int(where.sum())
    return total / count if count else float("nan")

"""Attention share to a key set, measured inside the model's own forward (METHOD.md 3 B).

``output_attentions=True`` forces eager attention and keeps every layer's ``[B, H, T, T]`` map to read one row
of each. Here a share probe, a modifier of the one registered attention function (``tga_fast.models.attention``),
computes at the probed blocks only the requested rows' share with the ``attention_share`` op, and the block's
output is computed as usual (SDPA, or ``knockout_attention`` where a ``knockout`` is open: the probe then records
the knocked-out attention, whichever context was opened first).

    with attention_shares(model, key_set=toxic_mask, rows=last_positions) as probe:
        model(**batch)
    probe.share           # [L, B, H, R] fp32, decoder blocks 1..N by default
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import resolve
from tga_fast.models.attention import ShareProbe, attention_modifiers

__all__ = ["AttentionShares", "attention_shares"]


@dataclass
class AttentionShares:
    """``share``: ``[L, B, H, R]`` fp32, for the probed decoder blocks in the order given."""

    blocks: tuple[int, ...]
    _share: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def share(self) -> torch.Tensor:
        missing = [b for b in self.blocks if b not in self._share]
        if missing:
            raise RuntimeError(f"no share for blocks {missing}: run the model's forward inside the probe first")
        return torch.stack([self._share[b] for b in self.blocks])


@contextlib.contextmanager
def attention_shares(
    model: nn.Module, key_set: torch.Tensor, rows: torch.Tensor, blocks: Iterable[int] | None = None
) -> Iterator[AttentionShares]:
    """Records, at decoder blocks ``blocks`` (1..N: block k produces ``hidden_states[k]``; default all), the share
    of the attention of query rows ``rows`` (int64 ``[B, R]``) that falls on ``key_set`` (bool ``[B, T]``), per
    head (the paper averages over heads). The first full-sequence forward inside the context is recorded.

    The share is computed over the causal row (keys up to the query). In a family whose own mask is not causal
    (the adapter's ``attention_mask``: Gemma 3's image block, PaliGemma's prefix) that is the model's row only for
    queries that see nothing after them: the last prompt position (what the analyses probe), or text after the
    image in Gemma 3."""
    parts = resolve(model)
    blocks = parts.check_blocks(range(1, parts.num_layers + 1) if blocks is None else blocks)
    result = AttentionShares(blocks)
    pairs = [
        (parts.decoder_layers[block - 1].self_attn, ShareProbe(block, key_set, rows, store=result._share))
        for block in blocks
    ]
    with attention_modifiers(model, pairs):
        yield result

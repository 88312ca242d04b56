"""Interventions on a running HF model, each a context manager that restores the model on exit.

- ``knockout(model, blocks, blocked)``: information-flow knockout (METHOD.md 3 C). At decoder blocks ``blocks``
  (1..N: block k produces ``hidden_states[k]``) attention runs through ``knockout_attention``, so the blocked
  tokens' keys are invisible to every later query; elsewhere it defers to SDPA. It is a modifier of the one
  registered attention function (``tga_fast.models.attention``), so it works in ``forward`` and in ``generate``
  with the KV cache, and nests with other knockouts and with ``attention_shares``.
- ``steer(model, layers, spans, vectors, mode)``: add (or write) vectors into the hidden states of a span at
  the chosen HF layers (METHOD.md 3 E).
- ``skip_layers(model, blocks)``: decoder blocks (1..N) that pass their input through unchanged (the reference
  code's whole-layer variant of 3 C).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import resolve
from tga_fast.models.attention import BlockedKeys, attention_modifiers
from tga_fast.models.hooks import hidden_from_pre_hook, hidden_of, layer_hook_points
from tga_fast.models.spans import Spans

__all__ = ["knockout", "skip_layers", "steer"]


@contextlib.contextmanager
def knockout(model: nn.Module, blocks: Iterable[int], blocked: torch.Tensor) -> Iterator[None]:
    """Blocks attention to the ``blocked`` tokens' keys (bool ``[B, T_prompt]``) from every later query at the
    decoder blocks ``blocks`` (1..N: block k produces ``hidden_states[k]``). Padding semantics are kept (the mask's
    padded keys stay invisible); a sliding-window mask is not applied in the knocked-out blocks of a causal
    family. A family whose own mask is not causal (the adapter's ``attention_mask``: Gemma 3's image block,
    PaliGemma's prefix) keeps its mask, sliding window included, and a blocked key is hidden from every query but
    its own; key j is taken to be position j, so a sliding-window cache that has dropped prompt keys (a prompt
    longer than Gemma 3's window) is not supported there.

    Nests with other knockouts (a block knocked out twice hides both key sets) and with ``attention_shares`` (the
    probe records the knocked-out attention), in any order."""
    parts = resolve(model)
    if blocked.dtype != torch.bool or blocked.dim() != 2:
        raise ValueError(f"blocked must be a bool [B, T] tensor, got {blocked.dtype} {tuple(blocked.shape)}")
    modifier = BlockedKeys(blocked, within_model_mask=parts.architecture.attention_mask != "causal")
    pairs = [(parts.decoder_layers[k - 1].self_attn, modifier) for k in parts.check_blocks(blocks)]
    with attention_modifiers(model, pairs):
        yield


@contextlib.contextmanager
def steer(
    model: nn.Module,
    layers: Iterable[int],
    spans: Spans | torch.Tensor,
    vectors: torch.Tensor,
    mode: str = "add",
) -> Iterator[None]:
    """Adds (``mode="add"``) or writes (``"replace"``) ``vectors`` into the rows of one span per sample at HF
    layers ``layers`` (0..N, as ``capture``): what the next block reads.

    Args:
        spans: ``Spans`` with one span, or int64 ``[B, 1, 2]`` (absolute positions in the prompt).
        vectors: ``[B, D]`` (the same at every layer) or ``[L, B, D]`` (one per layer, in the order given).

    In ``generate``, rows are matched by absolute position: a forward's first row is at the number of tokens
    already in the KV cache (read before block 1 runs), so decoding steps after the prompt are left alone, also
    where the span starts at position 0 (PaliGemma's image) and whatever the family's position ids are (Qwen's
    3-D rotary positions, Gemma's or PaliGemma's offsets say nothing about row indices).
    """
    if mode not in ("add", "replace"):
        raise ValueError(f"mode must be 'add' or 'replace', got {mode!r}")
    parts = resolve(model)
    layers = parts.check_layers(layers)
    span = spans.tensor if isinstance(spans, Spans) else spans
    if span.dim() != 3 or span.shape[1] != 1:
        raise ValueError(f"steer takes one span per sample ([B, 1, 2]), got {tuple(span.shape)}")
    if vectors.dim() == 2:
        vectors = vectors.expand(len(layers), *vectors.shape)
    if vectors.dim() != 3 or vectors.shape[0] != len(layers) or vectors.shape[1] != span.shape[0]:
        raise ValueError(f"vectors must be [B, D] or [L={len(layers)}, B={span.shape[0]}, D], got {tuple(vectors.shape)}")

    # Tokens already cached when the current forward started: its rows are positions past + 0 .. Tq - 1.
    # transformers 5.24 passes no cache_position to decoder blocks; the cache object is the one source that counts
    # tokens, not positions.
    past = {"tokens": 0}

    def count_cached(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        past["tokens"] = int(cache.get_seq_length()) if cache is not None else 0

    def edit(hidden: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        positions = past["tokens"] + torch.arange(hidden.shape[1], device=hidden.device)
        local = span.to(hidden.device)
        rows = (positions >= local[:, :, 0]) & (positions < local[:, :, 1])  # [B, Tq]
        vector = vector.to(hidden.device, hidden.dtype)[:, None, :]
        if mode == "add":
            return hidden + rows[..., None].to(hidden.dtype) * vector
        return torch.where(rows[..., None], vector, hidden)

    def make_hook(vector: torch.Tensor, kind: str):
        if kind == "pre":

            def pre_hook(module, args, kwargs):
                hidden = edit(hidden_from_pre_hook(args, kwargs), vector)
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            return pre_hook

        def post_hook(module, args, kwargs, output):
            hidden = edit(hidden_of(output), vector)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return post_hook

    handles = []
    try:
        # Before any steering pre-hook on block 1 (layer 0), and before block 1 adds this forward to the cache.
        handles.append(parts.decoder_layers[0].register_forward_pre_hook(count_cached, with_kwargs=True, prepend=True))
        for layer, vector in zip(layers, vectors):
            module, kind = layer_hook_points(parts, layer)
            hook = make_hook(vector, kind)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def skip_layers(model: nn.Module, blocks: Iterable[int]) -> Iterator[None]:
    """Decoder blocks ``blocks`` (1..N: block k produces ``hidden_states[k]``) return their input unchanged while
    the context is open."""
    parts = resolve(model)

    def pass_through(module, args, kwargs, output):
        hidden = hidden_from_pre_hook(args, kwargs)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [
        parts.decoder_layers[k - 1].register_forward_hook(pass_through, with_kwargs=True)
        for k in parts.check_blocks(blocks)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

"""Interventions on a running HF model, each a context manager that restores the model on exit.

- ``knockout(model, layers, blocked)``: information-flow knockout (METHOD.md 3 C). At decoder blocks ``layers``
  (1-based: block k produces ``hidden_states[k]``) attention runs through ``knockout_attention``, so the blocked
  tokens' keys are invisible to every later query; elsewhere it defers to SDPA. It is a registered transformers
  ``AttentionInterface`` function, so it works in ``forward`` and in ``generate`` with the KV cache.
- ``steer(model, layers, spans, vectors, mode)``: add (or write) vectors into the hidden states of a span at
  the chosen HF layers (METHOD.md 3 E).
- ``skip_layers(model, layers)``: decoder blocks that pass their input through unchanged (the reference
  code's whole-layer variant of 3 C).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import ModelParts, hidden_of, resolve
from tga_fast.models.capture_hooks import _hidden_from_pre, layer_hook_points
from tga_fast.models.spans import Spans
from tga_fast.ops import knockout_attention

__all__ = ["KNOCKOUT_ATTENTION", "knockout", "skip_layers", "steer"]

KNOCKOUT_ATTENTION = "tga_fast_knockout"
# Attention modules currently knocked out -> blocked bool [B, T_prompt]; read by the attention function.
_ACTIVE: dict[nn.Module, torch.Tensor] = {}


def _block_indices(parts: ModelParts, layers: Iterable[int], name: str = "layers") -> list[int]:
    """1-based decoder blocks -> 0-based indices into ``parts.decoder_layers``."""
    blocks = [int(k) for k in layers]
    bad = [k for k in blocks if not 1 <= k <= parts.num_layers]
    if bad or not blocks:
        raise ValueError(f"{name} {blocks} must be decoder blocks 1..{parts.num_layers}")
    return [k - 1 for k in blocks]


def key_valid_from_mask(attention_mask: torch.Tensor | None, num_keys: int) -> torch.Tensor | None:
    """bool ``[B, Tk]`` from the ``[B, 1, Tq, Tk]`` mask transformers passes (boolean, or additive with the dtype's
    minimum for hidden keys): a key is real, not padding, if some query may see it. None for no mask."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        visible = attention_mask
    else:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min
    return visible[:, 0].any(dim=1)[:, -num_keys:]


def _knockout_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """An ``AttentionInterface`` function: knockout attention for registered modules, SDPA for the others.

    query ``[B, H, Tq, d]``, key/value ``[B, Hkv, Tk, d]`` -> (``[B, Tq, H, d]``, None) as transformers expects.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    blocked = _ACTIVE.get(module)
    if blocked is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    num_keys = key.shape[2]
    blocked = blocked.to(query.device)
    if blocked.shape[1] < num_keys:  # tokens generated after the prompt are never blocked
        blocked = torch.nn.functional.pad(blocked, (0, num_keys - blocked.shape[1]), value=False)
    key_valid = key_valid_from_mask(attention_mask, num_keys)
    out = knockout_attention(query, key, value, blocked[:, :num_keys], scale=scaling, key_valid=key_valid)
    return out.transpose(1, 2).contiguous(), None


def _register_knockout_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(KNOCKOUT_ATTENTION, _knockout_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(KNOCKOUT_ATTENTION, sdpa_mask)  # boolean masks, as SDPA gets them


def _text_config(model: nn.Module):
    return getattr(model.config, "text_config", None) or model.config


@contextlib.contextmanager
def knockout(model: nn.Module, layers: Iterable[int], blocked: torch.Tensor) -> Iterator[None]:
    """Blocks attention to the ``blocked`` tokens' keys (bool ``[B, T_prompt]``) from every later query at the
    decoder blocks ``layers`` (1-based). Padding semantics are kept (the mask's padded keys stay invisible);
    a sliding-window mask is not applied in the knocked-out blocks."""
    parts = resolve(model)
    if blocked.dtype != torch.bool or blocked.dim() != 2:
        raise ValueError(f"blocked must be a bool [B, T] tensor, got {blocked.dtype} {tuple(blocked.shape)}")
    _register_knockout_attention()
    modules = [parts.decoder_layers[i].self_attn for i in _block_indices(parts, layers)]
    text_config = _text_config(model)
    previous = text_config._attn_implementation
    for module in modules:
        _ACTIVE[module] = blocked
    text_config._attn_implementation = KNOCKOUT_ATTENTION
    try:
        yield
    finally:
        text_config._attn_implementation = previous
        for module in modules:
            _ACTIVE.pop(module, None)


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

    In ``generate``, rows are matched by absolute position (``cache_position``), so decoding steps after the
    prompt are left alone.
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

    def edit(hidden: torch.Tensor, vector: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(hidden.shape[1], device=hidden.device)
        local = span.to(hidden.device)
        rows = (positions >= local[:, :, 0]) & (positions < local[:, :, 1])  # [B, Tq]
        vector = vector.to(hidden.device, hidden.dtype)[:, None, :]
        if mode == "add":
            return hidden + rows[..., None].to(hidden.dtype) * vector
        return torch.where(rows[..., None], vector, hidden)

    def make_hook(vector: torch.Tensor, kind: str):
        if kind == "pre":

            def pre_hook(module, args, kwargs):
                hidden = edit(_hidden_from_pre(args, kwargs), vector, kwargs.get("cache_position"))
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}

            return pre_hook

        def post_hook(module, args, kwargs, output):
            hidden = edit(hidden_of(output), vector, kwargs.get("cache_position"))
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return post_hook

    handles = []
    try:
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
def skip_layers(model: nn.Module, layers: Iterable[int]) -> Iterator[None]:
    """Decoder blocks ``layers`` (1-based) return their input unchanged while the context is open."""
    parts = resolve(model)

    def pass_through(module, args, kwargs, output):
        hidden = _hidden_from_pre(args, kwargs)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [
        parts.decoder_layers[i].register_forward_hook(pass_through, with_kwargs=True)
        for i in _block_indices(parts, layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

"""One registered attention function for every attention intervention, reading a per-module stack of modifiers.

transformers picks a decoder block's attention function by name (``config._attn_implementation``) from its
``AttentionInterface`` registry. tga_fast registers one, ``"tga_fast"``, which looks up the modifiers open on the
calling attention module:

- :class:`BlockedKeys` (opened by ``knockout``): keys invisible to every later query; several on one module
  block the union of their keys;
- :class:`ShareProbe` (opened by ``attention_shares``): records the share of some query rows' attention on a key
  set, as the model computes it, i.e. with every knockout open on that module applied.

The attention runs through ``knockout_attention`` where some key is blocked and through SDPA otherwise (also in
the blocks without modifiers, whatever the model's own implementation is). :func:`attention_modifiers` switches
the model to this function when its first modifier context opens and restores the model's own implementation
when its last one closes (also on error), so contexts nest in any order and an inner one never hides an outer one.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import text_config_of
from tga_fast.ops import attention_share, knockout_attention

__all__ = [
    "ATTENTION_NAME",
    "AttentionModifier",
    "BlockedKeys",
    "ShareProbe",
    "attention_modifiers",
    "key_valid_from_mask",
    "open_modifiers",
]

ATTENTION_NAME = "tga_fast"
# Attention module -> the modifiers open on it, oldest first. Weak keys: a model dropped inside a context is
# not kept alive by it.
_STACKS: "weakref.WeakKeyDictionary[nn.Module, list[AttentionModifier]]" = weakref.WeakKeyDictionary()
_registered = False


@dataclass
class _Switch:
    """A text config switched to ``ATTENTION_NAME``: its own implementation and how many contexts are open."""

    config: object  # held while switched, so its id (the key of _SWITCHED) cannot be reused
    own_implementation: str | None
    open_contexts: int = 0


_SWITCHED: dict[int, _Switch] = {}


class AttentionModifier:
    """What one intervention does to one attention module. Subclasses override either method."""

    def blocked_keys(self, num_keys: int, device: torch.device) -> torch.Tensor | None:
        """bool ``[B, num_keys]``: keys hidden from every later query, or None (blocks nothing)."""
        return None

    def observe(self, query, key, key_valid, blocked, scale) -> None:
        """Sees the module's query ``[B, H, Tq, d]`` and key ``[B, Hkv, Tk, d]``, its padding mask ``key_valid``
        (bool ``[B, Tk]`` or None) and the union ``blocked`` (bool ``[B, Tk]`` or None) of the open knockouts."""


@dataclass(eq=False)
class BlockedKeys(AttentionModifier):
    """``blocked``: bool ``[B, T_prompt]``; tokens generated after the prompt are never blocked.

    ``within_model_mask``: the family's own mask is not causal (Gemma 3's bidirectional image block, a prefix-LM):
    the blocked keys are removed from that mask (each stays visible to its own query only) instead of running the
    causal fused op, which would silently make those blocks causal."""

    blocked: torch.Tensor
    within_model_mask: bool = False

    def blocked_keys(self, num_keys: int, device: torch.device) -> torch.Tensor:
        blocked = self.blocked.to(device)
        if blocked.shape[1] < num_keys:
            blocked = torch.nn.functional.pad(blocked, (0, num_keys - blocked.shape[1]), value=False)
        return blocked[:, :num_keys]


@dataclass(eq=False)
class ShareProbe(AttentionModifier):
    """Records into ``store[block]`` the ``[B, H, R]`` fp32 share of rows ``rows`` (int64 ``[B, R]``) on
    ``key_set`` (bool ``[B, T]``), from the first full-sequence forward (query length == key length)."""

    block: int
    key_set: torch.Tensor
    rows: torch.Tensor
    store: dict = field(default_factory=dict)

    def observe(self, query, key, key_valid, blocked, scale) -> None:
        if self.block in self.store or query.shape[2] != key.shape[2]:
            return
        device = query.device
        key_set, rows = self.key_set.to(device), self.rows.to(device)
        if blocked is None:
            self.store[self.block] = attention_share(query, key, key_set, rows, scale=scale, key_valid=key_valid)
            return
        # A knocked-out key j is hidden from the queries after it, so what a row sees depends on the row: one op
        # call per row with that row's keys (R is 1 in the analyses).
        positions = torch.arange(key.shape[2], device=device)
        valid = torch.ones_like(blocked) if key_valid is None else key_valid
        shares = []
        for r in range(rows.shape[1]):
            row = rows[:, r : r + 1]  # [B, 1]
            seen = valid & ~(blocked & (positions[None, :] < row))
            shares.append(attention_share(query, key, key_set, row, scale=scale, key_valid=seen))
        self.store[self.block] = torch.cat(shares, dim=-1)


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


def open_modifiers(module: nn.Module) -> tuple[AttentionModifier, ...]:
    """The modifiers open on an attention module, oldest first."""
    return tuple(_STACKS.get(module, ()))


def _attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The registered ``AttentionInterface`` function. query ``[B, H, Tq, d]``, key/value ``[B, Hkv, Tk, d]`` ->
    (``[B, Tq, H, d]``, None) as transformers expects."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    stack = _STACKS.get(module)
    if not stack:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    num_keys = key.shape[2]
    key_valid = key_valid_from_mask(attention_mask, num_keys)
    blocked = None
    for modifier in stack:
        keys = modifier.blocked_keys(num_keys, query.device)
        if keys is not None:
            blocked = keys if blocked is None else blocked | keys
    for modifier in stack:
        modifier.observe(query, key, key_valid, blocked, scaling)
    if blocked is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if isinstance(attention_mask, torch.Tensor) and any(getattr(m, "within_model_mask", False) for m in stack):
        visible = _without_blocked(attention_mask, blocked, query.shape[2])
        return sdpa_attention_forward(module, query, key, value, visible, dropout=dropout, scaling=scaling, **kwargs)
    out = knockout_attention(query, key, value, blocked, scale=scaling, key_valid=key_valid)
    return out.transpose(1, 2).contiguous(), None


def _without_blocked(attention_mask: torch.Tensor, blocked: torch.Tensor, num_queries: int) -> torch.Tensor:
    """The model's own mask (``[B, 1, Tq, Tk]``, boolean or additive) with each blocked key hidden from every query
    but its own (bool ``[B, 1, Tq, Tk]``). The queries are the last ``Tq`` of the ``Tk`` positions (a prefill or a
    decoding step with the whole prompt in the cache). In a causal mask this is the fused op's rule ("invisible to
    every later query"); in a bidirectional block it also hides the key from the queries before it, so no
    information leaves a blocked token through the block."""
    if attention_mask.dtype == torch.bool:
        visible = attention_mask
    else:
        visible = attention_mask > torch.finfo(attention_mask.dtype).min
    num_keys = blocked.shape[1]
    keys = torch.arange(num_keys, device=blocked.device)
    queries = keys[num_keys - num_queries :]
    other = queries[:, None] != keys[None, :]  # [Tq, Tk]
    return visible & ~(blocked[:, None, None, :] & other)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)  # boolean masks, as SDPA gets them
    _registered = True


def _switch_on(config) -> None:
    switch = _SWITCHED.get(id(config))
    if switch is None:
        switch = _SWITCHED[id(config)] = _Switch(config, config._attn_implementation)
    switch.open_contexts += 1
    config._attn_implementation = ATTENTION_NAME


def _switch_off(config) -> None:
    switch = _SWITCHED[id(config)]
    switch.open_contexts -= 1
    if switch.open_contexts == 0:  # the last context on this model: its own implementation comes back
        del _SWITCHED[id(config)]
        config._attn_implementation = switch.own_implementation


@contextlib.contextmanager
def attention_modifiers(model: nn.Module, modifiers: Iterable[tuple[nn.Module, AttentionModifier]]) -> Iterator[None]:
    """Opens ``(attention module, modifier)`` pairs on ``model`` for the duration of the context: pushed on each
    module's stack on entry, removed (by identity, whatever the order of exits) on exit, also on error."""
    config = text_config_of(model)
    _register()
    pushed: list[tuple[nn.Module, AttentionModifier]] = []
    _switch_on(config)
    try:
        for module, modifier in modifiers:
            _STACKS.setdefault(module, []).append(modifier)
            pushed.append((module, modifier))
        yield
    finally:
        for module, modifier in pushed:
            stack = _STACKS.get(module, [])
            for i, open_one in enumerate(stack):
                if open_one is modifier:
                    del stack[i]
                    break
            if not stack:
                _STACKS.pop(module, None)
        _switch_off(config)

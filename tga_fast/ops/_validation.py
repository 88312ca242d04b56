"""Argument checks of the public ops: clear ``TypeError``/``ValueError`` messages that name the argument.

Span values (order, range) are checked only where that costs no device synchronisation: for spans on the
CPU, outside ``torch.compile`` tracing. Spans on an accelerator are the caller's promise (``Spans`` builders
validate them on the CPU before moving them); kernels clamp them into ``[0, T]`` so that a bad span can give
a wrong number but never an out-of-bounds access.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_hidden(hidden: object, name: str = "hidden") -> torch.Tensor:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() != 3:
        raise ValueError(f"{name} must have shape [B, T, D], got {tuple(hidden.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {hidden.dtype}")
    return hidden


def check_spans(spans: object, hidden: torch.Tensor, name: str = "spans") -> torch.Tensor:
    if not isinstance(spans, torch.Tensor):
        raise TypeError(f"{name} must be an int64 torch.Tensor of shape [B, S, 2], got {type(spans).__name__}")
    if spans.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {spans.dtype}")
    if spans.dim() != 3 or spans.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [B, S, 2] (half-open [start, end)), got {tuple(spans.shape)}")
    if spans.shape[0] != hidden.shape[0]:
        raise ValueError(f"{name} has batch size {spans.shape[0]} but hidden has {hidden.shape[0]}")
    if spans.device != hidden.device:
        raise ValueError(f"{name} is on {spans.device} but hidden is on {hidden.device}")
    if spans.device.type == "cpu" and not torch.compiler.is_compiling() and spans.numel() > 0:
        check_span_values(spans, hidden.shape[1], name)
    return spans


def check_span_values(spans: torch.Tensor, seq_len: int, name: str = "spans") -> None:
    """Raises naming the first bad span: start > end, start < 0 or end > seq_len."""
    starts, ends = spans[..., 0], spans[..., 1]
    bad = (starts > ends) | (starts < 0) | (ends > seq_len)
    if bool(bad.any()):
        b, s = (int(i) for i in bad.nonzero()[0])
        start, end = int(starts[b, s]), int(ends[b, s])
        reason = "start > end" if start > end else f"outside [0, {seq_len}]"
        raise ValueError(f"{name}[{b}, {s}] = [{start}, {end}) is invalid: {reason} (sequence length {seq_len})")


def check_target(target: object, hidden: torch.Tensor, name: str = "target") -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, D], got {type(target).__name__}")
    if target.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {target.dtype}")
    expected = (hidden.shape[0], hidden.shape[2])
    if target.dim() != 2 or tuple(target.shape) != expected:
        raise ValueError(f"{name} must have shape [B, D] = {list(expected)}, got {tuple(target.shape)}")
    if target.device != hidden.device:
        raise ValueError(f"{name} is on {target.device} but hidden is on {hidden.device}")
    return target

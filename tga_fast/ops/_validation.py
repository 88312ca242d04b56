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


# --- attention ops ---------------------------------------------------------------------------------------


def check_attention_tensor(x: object, name: str, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    return x


def check_query_key(q: object, k: object, *, same_length: bool) -> None:
    """q ``[B, H, Tq, d]`` and k ``[B, Hkv, Tk, d]``: same batch, head size, dtype and device, ``H % Hkv == 0``
    and ``Tq <= Tk`` (``Tq == Tk`` when ``same_length``)."""
    check_attention_tensor(q, "q", "[B, H, Tq, d]")
    check_attention_tensor(k, "k", "[B, Hkv, Tk, d]")
    batch, heads, num_queries, dim = q.shape
    if k.dtype != q.dtype:
        raise TypeError(f"k must have q's dtype {q.dtype}, got {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if k.shape[0] != batch or k.shape[3] != dim:
        raise ValueError(f"k must have shape [B, Hkv, Tk, d] with q's B = {batch} and d = {dim}, got {tuple(k.shape)}")
    if k.shape[1] == 0 or heads % k.shape[1] != 0:
        raise ValueError(f"k has {k.shape[1]} heads, which must divide q's {heads} heads (grouped-query attention)")
    if same_length and k.shape[2] != num_queries:
        raise ValueError(
            f"k must cover q's {num_queries} positions (q [B, H, T, d], k [B, Hkv, T, d]), got Tk = {k.shape[2]}"
        )
    if k.shape[2] < num_queries:
        raise ValueError(f"q has {num_queries} positions but k only {k.shape[2]}: queries are the last Tq of Tk keys")


def check_value(v: object, k: torch.Tensor) -> torch.Tensor:
    check_attention_tensor(v, "v", "[B, Hkv, Tk, d]")
    if v.dtype != k.dtype:
        raise TypeError(f"v must have k's dtype {k.dtype}, got {v.dtype}")
    if v.device != k.device:
        raise ValueError(f"v is on {v.device} but k is on {k.device}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {list(k.shape)}, got {tuple(v.shape)}")
    return v


def check_key_mask(mask: object, name: str, k: torch.Tensor) -> torch.Tensor:
    """A bool ``[B, Tk]`` mask over the keys of ``k [B, Hkv, Tk, d]``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape [B, Tk], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be bool, got {mask.dtype}")
    expected = (k.shape[0], k.shape[2])
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} must have shape [B, Tk] = {list(expected)}, got {tuple(mask.shape)}")
    if mask.device != k.device:
        raise ValueError(f"{name} is on {mask.device} but k is on {k.device}")
    return mask


def check_rows(rows: object, k: torch.Tensor, name: str = "rows") -> torch.Tensor:
    """int64 ``[B, R]`` query positions in ``[0, T)``; values are checked on the CPU only (no device sync)."""
    if not isinstance(rows, torch.Tensor):
        raise TypeError(f"{name} must be an int64 torch.Tensor of shape [B, R], got {type(rows).__name__}")
    if rows.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {rows.dtype}")
    if rows.dim() != 2 or rows.shape[0] != k.shape[0]:
        raise ValueError(f"{name} must have shape [B, R] with B = {k.shape[0]}, got {tuple(rows.shape)}")
    if rows.device != k.device:
        raise ValueError(f"{name} is on {rows.device} but k is on {k.device}")
    if rows.device.type == "cpu" and not torch.compiler.is_compiling() and rows.numel() > 0:
        seq_len = k.shape[2]
        bad = (rows < 0) | (rows >= seq_len)
        if bool(bad.any()):
            b, r = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name}[{b}, {r}] = {int(rows[b, r])} is outside [0, {seq_len})")
    return rows


def check_scale(scale: object) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    return float(scale)

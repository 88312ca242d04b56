"""Shared pieces of the Triton kernels: meta-parameter heuristics, the device guard, an exact bf16 cast.

The kernels are memory bound, so the meta-parameters are chosen by a few lines of arithmetic on the shapes
(never by ``@triton.autotune``, which would time configurations on the first call and does not run under
``TRITON_INTERPRET=1``): tiles of about 8K elements (16-32 KiB of loads in flight per program) and enough
programs to cover every SM several times over.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Elements of one [BLOCK_T, BLOCK_D] tile: 32 fp32 accumulator registers per thread at 8 warps.
TILE_ELEMENTS = 8192
# A row chunk of at most 256 columns: 512 B of bf16, contiguous, four 16-byte vector loads per warp row.
MAX_BLOCK_D = 256
MAX_BLOCK_T = 64
# Programs per SM the row split aims for when every span covered the whole sequence.
PROGRAMS_PER_SM = 16
# SM count of an H100 SXM, standing in for the device under the interpreter (CPU tensors).
DEFAULT_SM_COUNT = 132
# Partial-sum rows an epilogue loads at once (a [32, BLOCK_D] tile).
MAX_CHUNK_TILE = 32


def interpreted() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run in NumPy on the host)."""
    return bool(triton.knobs.runtime.interpret)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached; a host-side property query, no synchronisation)."""
    if device.type != "cuda" or interpreted():
        return DEFAULT_SM_COUNT
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


def device_guard(tensor: torch.Tensor):
    """Makes ``tensor``'s GPU the current device: Triton launches on the current device and stream."""
    if tensor.device.type == "cuda" and not interpreted():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def num_warps_for(tile_elements: int) -> int:
    """One warp per 1K tile elements, 1 to 8."""
    return max(1, min(8, tile_elements // 1024))


@dataclass(frozen=True)
class RowReduceMeta:
    """How a span-row reduction over ``hidden [B, T, D]`` is cut up.

    Programs own ``(span, row chunk, column block)``: ``rows_per_split`` rows (a multiple of ``block_t``) of
    ``block_d`` columns. ``num_splits == 1`` means one program reads a whole span (no partial sums).
    """

    block_t: int
    block_d: int
    num_warps: int
    rows_per_split: int
    num_splits: int


def row_reduce_meta(num_spans: int, seq_len: int, dim: int, element_size: int, device: torch.device) -> RowReduceMeta:
    """Meta-parameters of the span-sum kernel for ``num_spans = B * S`` spans over ``[*, seq_len, dim]``.

    Span lengths are unknown on the host (reading them would synchronise), so the split assumes spans as
    long as the sequence: it cuts ``seq_len`` into chunks such that ``num_spans * column blocks * chunks``
    is about ``PROGRAMS_PER_SM`` programs per SM. Programs whose chunk lies past their span's end exit at
    once. A chunk is at least 128 bytes per column, so the fp32 partial sums (4 bytes per column, written
    and read back once) cost at most ~6% of the rows they summarise.
    """
    block_d = min(max(triton.next_power_of_2(dim), 16), MAX_BLOCK_D)
    block_t = min(max(TILE_ELEMENTS // block_d, 1), MAX_BLOCK_T, max(triton.next_power_of_2(seq_len), 1))
    num_warps = num_warps_for(block_t * block_d)
    column_blocks = triton.cdiv(dim, block_d)
    wanted_splits = triton.cdiv(PROGRAMS_PER_SM * sm_count(device), max(num_spans * column_blocks, 1))
    min_rows = max(128 // element_size, block_t)
    rows = max(triton.cdiv(seq_len, wanted_splits), min_rows)
    rows = triton.cdiv(rows, block_t) * block_t
    if rows >= seq_len:
        return RowReduceMeta(block_t, block_d, num_warps, max(seq_len, 1), 1)
    return RowReduceMeta(block_t, block_d, num_warps, rows, triton.cdiv(seq_len, rows))


def chunk_tile(num_splits: int) -> int:
    """Partial-sum rows an epilogue loads per step: all of a span's (``num_splits`` at most), up to 32."""
    return min(triton.next_power_of_2(num_splits), MAX_CHUNK_TILE)


@triton.jit
def cast_to(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest even. The interpreter of Triton 3.7 truncates fp32 -> bf16
    (and its RTNE mode does not carry into the exponent), so there the rounding is done on the bits."""
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        lsb = (bits >> 16) & 1
        rounded = ((bits + 0x7FFF + lsb) >> 16).to(tl.uint16)
        rounded = tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)
        return rounded.to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)

"""Shared pieces of every Triton kernel: tile constants, the device guard, input layout, exact casts and products.

The one home of what more than one kernel uses (the span-row reduction shared by segment_pool and
segment_cosine is ``_triton_span_sums.py``); a kernel module imports these, never another kernel module.

The kernels are memory bound, so the meta-parameters are chosen by a few lines of arithmetic on the shapes
(never by ``@triton.autotune``, which would time configurations on the first call and does not run under
``TRITON_INTERPRET=1``): tiles of about 8K elements (16-32 KiB of loads in flight per program) and enough
programs to cover every SM several times over.
"""

from __future__ import annotations

import contextlib
import functools

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
# exp(x) = exp2(x * LOG2E): the attention kernels keep their softmax statistics in base 2.
LOG2E = 1.4426950408889634


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


@triton.jit
def matmul(a, b, acc, DOT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """``a @ b + acc`` in fp32. Triton 3.7's interpreter returns garbage for bf16 ``tl.dot``: there the
    operands are widened to fp32 first, which is exact (a bf16 x bf16 product fits in fp32)."""
    if INTERPRETED and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for ``dtype`` operands."""
    # fp32 inputs: three TF32 products per product (fp32 accuracy on tensor cores). Plain TF32 is 1e-3 off the
    # reference; "ieee" runs on the FMA units and spills kilobytes of registers on sm_90.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its last dimension is contiguous, else a contiguous copy: the kernels vectorise loads
    along the last dimension, while the other dimensions may keep any stride (a slice is read in place)."""
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def key_mask_bytes(mask: torch.Tensor) -> torch.Tensor:
    """A bool ``[B, Tk]`` mask as uint8 with a unit key stride (a view when it already has one)."""
    mask = mask if mask.stride(-1) == 1 else mask.contiguous()
    return mask.view(torch.uint8)

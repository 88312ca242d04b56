"""Shared test helpers: the error budget, span generators and the implementations under test."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from tga_fast.ops import BACKENDS
from tga_fast.ops._error_budget import FLOOR, assert_within_budget, max_error  # noqa: F401  (the tests' budget)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# opcheck over every dtype: fp32 in the fast loop, the half precisions (the same registrations, 0.5 s each) in
# `make test` only.
OPCHECK_DTYPES = (torch.float32, *(pytest.param(d, marks=pytest.mark.slow) for d in DTYPES[1:]))


def random_spans(batch: int, count: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random spans ``[B, S, 2]``, including empty ones, ones touching 0 and T, and overlaps."""
    ends = torch.randint(0, seq_len + 1, (batch, count, 2), generator=gen).sort(dim=-1).values
    return ends.contiguous()


# Hand-made span layouts: (name, seq_len, spans per sample); every layout is a valid [B, S, 2] tensor.
SPAN_CASES = {
    "single-row": (1, [[[0, 1]], [[0, 0]]]),
    "both-ends-and-empty": (9, [[[0, 9], [3, 5], [9, 9]], [[2, 2], [8, 9], [0, 1]]]),
    "overlapping": (16, [[[0, 10], [5, 16], [4, 6]], [[1, 15], [1, 15], [14, 16]]]),
    "different-lengths": (33, [[[0, 33], [30, 31]], [[7, 8], [2, 29]]]),
}


def span_case(name: str) -> tuple[int, torch.Tensor]:
    seq_len, spans = SPAN_CASES[name]
    return seq_len, torch.tensor(spans, dtype=torch.int64)


def cpp_available() -> bool:
    return BACKENDS["cpu"].available


def require_cpp() -> None:
    """Skip unless the C++ extension is loaded (test_dispatch fails the run if it should have been)."""
    if not cpp_available():
        pytest.skip(f"C++ extension: {BACKENDS['cpu'].reason}")


requires_cpp = pytest.mark.skipif(not cpp_available(), reason=f"C++ extension: {BACKENDS['cpu'].reason}")


def triton_module(op: str):
    """The Triton launchers of ``op`` (run on CPU tensors under TRITON_INTERPRET=1), or skip."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    return importlib.import_module(f"tga_fast.ops.kernels.{op}.triton")


def triton_device() -> str:
    """Where the Triton tests run: the GPU when there is one, else the CPU through the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def save_tiny_llava(folder, layers: int = 4):
    """A random LLaVA (Llama backbone, ``layers`` decoder blocks) with its processor, saved as a local HF folder;
    returns the folder."""
    import warnings

    from tga_fast.models.tiny import tiny_vlm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model, processor = tiny_vlm("llava", "llama", layers=layers)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

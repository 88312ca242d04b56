"""The error budget a kernel is held to, shared by the tests and the benchmarks' correctness check.

flash-attention's rule: a kernel's error against an fp32 oracle may be at most twice the reference's own error
in the low precision (the same math on the same low-precision inputs, rounded as the kernel must round), plus
a per-dtype floor scaled by the oracle's magnitude (what any fp32-accumulating kernel may differ by in the
output's dtype through summation order alone). NaN positions must match exactly.
"""

from __future__ import annotations

import torch

# The floor of the budget, relative to max |oracle|: a few ulps of fp32 after reordered sums of ~10^3 terms;
# one ulp of fp16 (2^-10) and bf16 (2^-7 -> 8e-3) for outputs rounded once to those dtypes.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, with matching NaN positions required and NaN-NaN counted as 0."""
    actual, expected = actual.double(), expected.double()
    if not torch.equal(actual.isnan(), expected.isnan()):  # raised, not asserted: holds under python -O too
        raise AssertionError("NaN positions differ")
    finite = ~expected.isnan()
    if not finite.any():
        return 0.0
    return (actual[finite] - expected[finite]).abs().max().item()


def error_budget(oracle: torch.Tensor, reference_lowp: torch.Tensor, dtype: torch.dtype) -> float:
    """``2 * error(reference_lowp) + FLOOR[dtype] * max(1, max |oracle|)``."""
    scale = max(1.0, oracle.abs().nan_to_num().max().item()) if oracle.numel() else 1.0
    return 2 * max_error(reference_lowp, oracle) + FLOOR[dtype] * scale


def assert_within_budget(kernel: torch.Tensor, oracle: torch.Tensor, reference_lowp: torch.Tensor, dtype) -> None:
    """Raises AssertionError unless ``kernel``'s error against ``oracle`` is within :func:`error_budget`.

    kernel, oracle, reference_lowp: the same shape; ``dtype`` is the low precision the kernel ran in."""
    if kernel.shape != oracle.shape:
        raise AssertionError(f"shape {tuple(kernel.shape)} != oracle's {tuple(oracle.shape)}")
    budget = error_budget(oracle, reference_lowp, dtype)
    error = max_error(kernel, oracle)
    if error > budget:
        raise AssertionError(f"error {error:.3g} over budget {budget:.3g} ({dtype})")

"""segment_cosine on one layer: baseline vs reference vs cpp vs triton, forward and forward+backward.

The issue's target: the cpp forward at 50% or more of the measured copy bandwidth (LLaVA-7B shape, fp32);
triton at 70% or more of the device's copy bandwidth. Bytes counted: the span rows read (and, with the
backward, the [B, T, D] gradient written).
"""

import pytest

from benchmarks.harness import run_benchmark
from benchmarks.measure import MODES
from benchmarks.providers import PROVIDERS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", ["cpu-small", "llava7b"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_segment_cosine(benchmark, copy_bandwidth, provider, shape, dtype, mode):
    run_benchmark(benchmark, copy_bandwidth, "segment_cosine", provider, shape, dtype, mode)

"""segment_pool on one layer: baseline vs reference vs cpp vs triton, forward and forward+backward.

The span means alone (what ``capture`` pools at each layer); segment_cosine adds the cosine with a target.
Bytes counted: the span rows read (and, with the backward, the [B, T, D] gradient written).
"""

import pytest

from benchmarks.harness import run_benchmark
from benchmarks.measure import MODES
from benchmarks.providers import PROVIDERS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", ["cpu-small", "llava7b"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_segment_pool(benchmark, copy_bandwidth, provider, shape, dtype, mode):
    run_benchmark(benchmark, copy_bandwidth, "segment_pool", provider, shape, dtype, mode)

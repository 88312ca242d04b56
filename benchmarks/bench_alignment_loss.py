"""The whole TGA alignment loss over 9 layers: baseline vs reference vs cpp vs triton.

The issue's target (LLaVA-7B step, fp32, forward+backward): cpp at least 5x faster than baseline and at
least 1.5x faster than reference.
"""

import pytest

from benchmarks.harness import run_benchmark
from benchmarks.measure import MODES
from benchmarks.providers import PROVIDERS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["cpu-small", "llava7b"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_alignment_loss(benchmark, copy_bandwidth, provider, shape, mode):
    run_benchmark(benchmark, copy_bandwidth, "alignment_loss", provider, shape, "float32", mode)

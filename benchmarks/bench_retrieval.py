"""Retrieval: queries per second of faiss (CPU; GPU when present) against the torch brute force ("reference") and
the ``auto`` default, at corpus sizes 10k and 100k x 512, query batches 1, 64 and 1024, k = 10; plus index build.

The issue's target: on the CPU, ``auto`` is never slower than the better of faiss-cpu and torch at each batch
size: it times both on the first batches of each size, ``tga_fast.retrieval.cpu_choice``). "bytes" is the corpus read once per search, so
the GB/s column is the effective scan bandwidth; ``extra_info["qps"]`` holds queries per second.

    python -m pytest benchmarks/bench_retrieval.py -o python_files='bench_*.py' --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from tga_fast.retrieval import Index

DIM, K = 512, 10
CORPUS_SIZES = {"10k": 10_000, "100k": 100_000}
BATCHES = (1, 64, 1024)
PROVIDERS = ("reference", "faiss-cpu", "auto", "faiss-gpu", "torch-cuda")
_CORPORA: dict = {}
_INDICES: dict = {}


def unit_rows(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen), dim=1)


def corpus(size: str) -> torch.Tensor:
    if size not in _CORPORA:
        _CORPORA[size] = unit_rows(CORPUS_SIZES[size], 0)
    return _CORPORA[size]


def skip_reason(provider: str) -> str | None:
    try:
        import faiss
    except ImportError:
        faiss = None
    if provider in ("faiss-cpu", "auto", "faiss-gpu") and faiss is None:
        return "faiss is not installed"
    if provider == "faiss-gpu" and not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        return "faiss has no GPU"
    if provider == "torch-cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def build(provider: str, matrix: torch.Tensor) -> Index:
    if provider == "reference":
        return Index.build(matrix, "torch", device="cpu")
    if provider == "faiss-cpu":
        return Index.build(matrix, "faiss", device="cpu")
    if provider == "auto":
        return Index.build(matrix, "auto", device="cpu")
    if provider == "faiss-gpu":
        return Index.build(matrix, "faiss")
    return Index.build(matrix, "torch", device="cuda")  # fp16 corpus


def index_for(provider: str, size: str) -> Index:
    key = (provider, size)
    if key not in _INDICES:
        _INDICES[key] = build(provider, corpus(size))
    return _INDICES[key]


def synchronize(provider: str) -> None:
    if provider in ("faiss-gpu", "torch-cuda"):
        torch.cuda.synchronize()


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", list(CORPUS_SIZES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_search(benchmark, copy_bandwidth, provider, size, batch):
    reason = skip_reason(provider)
    if reason:
        pytest.skip(f"{provider}: {reason}")
    index = index_for(provider, size)
    queries = unit_rows(batch, 1)
    # Correctness before timing: the same ids as the reference, except where two scores tie within rounding.
    scores, ids = index.search(queries, K)
    ref_scores, ref_ids = index_for("reference", size).search(queries, K)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=2e-3 if provider == "torch-cuda" else 1e-5)
    assert (ids != ref_ids).float().mean().item() < 0.02

    def run():
        index.search(queries, K)
        synchronize(provider)

    device = "cuda" if provider in ("faiss-gpu", "torch-cuda") else "cpu"
    benchmark.group = f"retrieval search {size}x{DIM} Q={batch} k={K}"
    benchmark.extra_info.update(provider=provider, bytes=CORPUS_SIZES[size] * DIM * 4, peak_mb=None,
                                copy_gbps=copy_bandwidth(device) / 1e9, queries=batch)
    rounds = 20 if CORPUS_SIZES[size] * batch <= 10_000 * 64 else 5
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info["qps"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("size", list(CORPUS_SIZES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_build(benchmark, copy_bandwidth, provider, size):
    reason = skip_reason(provider)
    if reason:
        pytest.skip(f"{provider}: {reason}")
    matrix = corpus(size)

    def run():
        build(provider, matrix)
        synchronize(provider)

    device = "cuda" if provider in ("faiss-gpu", "torch-cuda") else "cpu"
    benchmark.group = f"retrieval build {size}x{DIM}"
    benchmark.extra_info.update(provider=provider, bytes=CORPUS_SIZES[size] * DIM * 4, peak_mb=None,
                                copy_gbps=copy_bandwidth(device) / 1e9)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def crossover(size: str = "100k", batches=(1, 8, 19, 20, 32, 64, 128, 256, 512, 1024, 2048), repeats: int = 5):
    """Interleaved faiss-cpu / torch timings per batch size (min of ``repeats``, alternating, so that load from
    other processes hits both alike): the evidence behind ``cpu_choice.static_choice``. Prints one line per batch."""
    import time

    index, reference = index_for("faiss-cpu", size), index_for("reference", size)
    print(f"corpus {size} x {DIM}, k={K}: queries/s (min of {repeats}, interleaved)")
    for batch in batches:
        queries = unit_rows(batch, 1)
        times = {"faiss": [], "torch": []}
        for _ in range(repeats):
            for name, idx in (("faiss", index), ("torch", reference)):
                start = time.perf_counter()
                idx.search(queries, K)
                times[name].append(time.perf_counter() - start)
        faiss_qps, torch_qps = (batch / min(times[n]) for n in ("faiss", "torch"))
        winner = "faiss" if faiss_qps > torch_qps else "torch"
        print(f"Q={batch:5d}  faiss {faiss_qps:8.0f}  torch {torch_qps:8.0f}  faster: {winner} "
              f"({max(faiss_qps, torch_qps) / min(faiss_qps, torch_qps):.2f}x)", flush=True)


if __name__ == "__main__":
    import sys

    crossover(*(sys.argv[1:2] or ["100k"]))

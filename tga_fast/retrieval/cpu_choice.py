"""How ``Index(backend="auto")`` picks faiss-cpu or the torch brute force for each search batch on the CPU.

Which is faster depends on the batch size, k, the BLAS each library ships (faiss: OpenBLAS, torch: MKL, which is
slow on AMD) and on the load the machine is under (faiss's OpenMP barrier suffers on a busy 2-core box): measured
crossovers moved between runs here. So the choice is measured, like cuDNN's benchmark mode: per bucket of
(batch size rounded up to a power of two, k), the first two batches run one backend each and are timed; later
batches use the faster, and every ``REPROBE_EVERY``-th batch times the other one again, so a change of load is
followed. Both backends return identical results (the ranking rule), so only the time differs.
``static_choice`` is the rule measured on a quiet machine, used when ``measure=False``.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

REPROBE_EVERY = 32
KEEP = 3  # recent timings per backend and bucket

# Quiet 2-core AMD EPYC, 100k x 512, k=10 (benchmarks/README.md, "Retrieval"): faiss's SIMD scan (< 20 queries)
# beats torch's single-threaded GEMV; from 20 queries faiss runs small BLAS blocks plus a heap per query and the
# [C, d] @ [d, Q] torch chunks win; at large batches faiss's OpenBLAS GEMM beats torch's MKL on this CPU.
CPU_FAISS_BELOW = 20
CPU_FAISS_FROM = 2048
CPU_FAISS_MAX_K = 256  # beyond, faiss's per-query heaps cost more than torch's topk


def static_choice(num_queries: int, k: int) -> str:
    """The fixed rule: ``"faiss"`` or ``"torch"``."""
    if k > CPU_FAISS_MAX_K:
        return "torch"
    return "faiss" if num_queries < CPU_FAISS_BELOW or num_queries >= CPU_FAISS_FROM else "torch"


def bucket(num_queries: int, k: int) -> tuple[int, int]:
    return (max(0, num_queries - 1).bit_length(), max(0, k - 1).bit_length())


class MeasuredChoice:
    """Per-bucket timing of both backends; ``run(num_queries, k, {"faiss": fn, "torch": fn})`` calls one."""

    def __init__(self):
        self.times = defaultdict(lambda: {"faiss": deque(maxlen=KEEP), "torch": deque(maxlen=KEEP)})
        self.calls = defaultdict(int)

    def pick(self, num_queries: int, k: int) -> str:
        key = bucket(num_queries, k)
        times, calls = self.times[key], self.calls[key]
        untimed = [name for name in ("faiss", "torch") if not times[name]]
        if untimed:
            return untimed[0]
        best = min(("faiss", "torch"), key=lambda name: min(times[name]))
        if calls % REPROBE_EVERY == REPROBE_EVERY - 1:
            return "torch" if best == "faiss" else "faiss"
        return best

    def run(self, num_queries: int, k: int, backends: dict):
        key = bucket(num_queries, k)
        name = self.pick(num_queries, k)
        start = time.perf_counter()
        result = backends[name]()
        # per query, so that batches of different sizes in one bucket compare fairly
        self.times[key][name].append((time.perf_counter() - start) / num_queries)
        self.calls[key] += 1
        return result

    def summary(self) -> dict:
        """``{(log2 Q, log2 k): chosen backend}`` for the buckets seen so far."""
        return {key: min(("faiss", "torch"), key=lambda n: min(t[n]) if t[n] else float("inf"))
                for key, t in self.times.items()}

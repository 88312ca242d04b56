"""Measurements shared by the benchmarks: copy bandwidth, peak memory, and the workloads themselves.

Peak memory on the CPU has no allocator counter, so it is read from the kernel: a fresh process builds the
inputs, runs the workload once to warm up, resets its peak RSS (``/proc/self/clear_refs``), runs it again and
reports ``VmHWM`` minus the RSS before the run. ``MALLOC_MMAP_THRESHOLD_`` pins glibc's mmap threshold so that
freed tensors go back to the kernel instead of being reused silently from the heap. On CUDA the allocator's
own peak counter is used in-process.

    python -m benchmarks.measure --workload alignment_loss --provider cpp --shape llava7b --mode forward+backward
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import providers
from benchmarks.shapes import SHAPES, AlignmentShape

ROOT = Path(__file__).resolve().parent.parent
MODES = ("forward", "forward+backward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def copy_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Bytes per second of ``dst.copy_(src)``, counting the read and the write (2 x nbytes)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# Inputs are rotated over copies that together exceed this, several times a 32 MiB last-level cache, so that
# every round reads its span rows from memory (a kernel re-reading one cached tensor would beat the copy bandwidth).
ROTATION_BYTES = 256 * 2**20


def workload(name: str, provider: str, shape: AlignmentShape, mode: str, dtype: torch.dtype):
    """``(run, bytes_moved)``: a closure doing one forward (and backward) on the next set of inputs, and the bytes
    an ideal fused kernel must move for it (span rows read, plus the ``[B, T, D]`` gradient written)."""
    device = providers.device_of(provider)
    grad = mode == "forward+backward"
    spans = shape.spans(device)
    layers = 1 if name in ("segment_pool", "segment_cosine") else shape.layers
    copies = max(1, -(-ROTATION_BYTES // (layers * shape.layer_bytes(dtype))))
    if name == "segment_pool":
        fn = providers.segment_pool(provider)
        sets = [(shape.hidden(dtype, device, seed=i, requires_grad=grad, layers=1)[0],) for i in range(copies)]

        def step(hidden):
            pooled = fn(hidden, spans)
            if grad:
                torch.autograd.grad(pooled.sum(), hidden)
            return pooled

    elif name == "segment_cosine":
        fn = providers.segment_cosine(provider)
        sets = [(shape.hidden(dtype, device, seed=i, requires_grad=grad, layers=1)[0], shape.targets(dtype, device)[0]) for i in range(copies)]

        def step(hidden, target):
            cos = fn(hidden, spans, target)
            if grad:
                torch.autograd.grad(cos.sum(), hidden)
            return cos

    elif name == "alignment_loss":
        fn = providers.alignment_loss(provider)
        sets = [(shape.hidden(dtype, device, seed=i, requires_grad=grad), shape.targets(dtype, device)) for i in range(copies)]

        def step(hidden, targets):
            loss = fn(hidden, spans, targets)
            if grad:
                torch.autograd.grad(loss, hidden)
            return loss

    else:
        raise ValueError(f"unknown workload {name!r}")
    rotation = itertools.cycle(sets)

    def run():
        with torch.set_grad_enabled(grad):
            return step(*next(rotation))

    moved = layers * (shape.span_bytes(dtype) + (shape.layer_bytes(dtype) if grad else 0))
    return run, moved


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(run, device: str) -> int:
    """Peak bytes allocated by ``run()`` beyond what was allocated before it, in this process."""
    run()  # warm-up: lazy initialisation is not the workload's memory
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    run()
    return _rss_bytes("VmHWM") - before


def peak_memory(name: str, provider: str, shape: str, mode: str, dtype: str) -> int | None:
    """Peak memory of one workload: in-process on CUDA, in a fresh process on the CPU. None if unmeasurable."""
    args = ["--workload", name, "--provider", provider, "--shape", shape, "--mode", mode, "--dtype", dtype]
    return probe_peak_memory(
        "benchmarks.measure", args, providers.device_of(provider),
        lambda: workload(name, provider, SHAPES[shape], mode, DTYPES[dtype])[0],
    )


def probe_peak_memory(module: str, args: list[str], device: str, make_run) -> int | None:
    """Peak bytes of one run of a bench's workload: ``make_run()`` in this process on CUDA (the allocator's
    counter is exact), ``python -m module *args`` in a fresh process on the CPU; None when
    ``TGA_FAST_BENCH_MEMORY=0``."""
    if os.environ.get("TGA_FAST_BENCH_MEMORY", "1") == "0":
        return None
    if device == "cuda":
        return peak_memory_here(make_run(), device)
    return peak_memory_in_fresh_process(module, args)


def peak_memory_in_fresh_process(module: str, args: list[str]) -> int:
    """Runs ``python -m module *args`` (a bench's ``main``, which prints ``{"peak_bytes": N}`` last) and returns N:
    a fresh process, so that what earlier benchmarks allocated does not hide this one's peak RSS."""
    # Large blocks via mmap: freed memory goes back to the OS, so VmHWM measures this run's peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory probe failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=["segment_pool", "segment_cosine", "alignment_loss"])
    parser.add_argument("--provider", required=True, choices=providers.PROVIDERS)
    parser.add_argument("--shape", required=True, choices=list(SHAPES))
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    args = parser.parse_args(argv)
    run, _ = workload(args.workload, args.provider, SHAPES[args.shape], args.mode, DTYPES[args.dtype])
    peak = peak_memory_here(run, providers.device_of(args.provider))
    print(json.dumps({"peak_bytes": peak}))


if __name__ == "__main__":
    main()

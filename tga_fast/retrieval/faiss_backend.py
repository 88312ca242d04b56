"""FAISS for ``Index``: import on demand, exact (``IndexFlatIP``) or IVF indices, moved to the GPUs when the
installed faiss has any (one ``StandardGpuResources`` per GPU, replicated or sharded)."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

# faiss's GPU k-selection handles k up to this (GPU_MAX_SELECTION_K, CUDA builds since faiss 1.7.3).
GPU_MAX_K = 2048


def import_faiss() -> ModuleType | None:
    """The faiss module, or None when it is not installed (the torch brute force is used then)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def require_faiss() -> ModuleType:
    faiss = import_faiss()
    if faiss is None:
        raise ImportError("faiss is not installed: `pip install faiss-cpu` (or faiss-gpu), or use backend='torch'")
    return faiss


def num_gpus(faiss: ModuleType) -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return get() if get is not None and hasattr(faiss, "StandardGpuResources") else 0


def default_nlist(n: int) -> int:
    """IVF lists: about 4 sqrt(N), with at least 39 training points per list (faiss's own minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def flat_index(faiss: ModuleType, matrix: np.ndarray):
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    return index


def flat_storage(faiss: ModuleType, index) -> np.ndarray:
    """A zero-copy ``[N, d]`` float32 view of an ``IndexFlat``'s vectors (valid while ``index`` lives and is not
    added to), so the torch path reads the same memory instead of holding a second copy of the corpus."""
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def ivf_index(faiss: ModuleType, matrix: np.ndarray, nlist: int, nprobe: int, train_size: int | None, seed: int):
    """``IndexIVFFlat`` with inner product, trained on a random sample (256 points per list by default)."""
    n, dim = matrix.shape
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample_size = min(n, train_size or 256 * nlist)
    sample = matrix if sample_size == n else matrix[np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))]
    index.train(np.ascontiguousarray(sample))
    index.add(matrix)
    index.nprobe = nprobe
    return index


def to_gpus(faiss: ModuleType, cpu_index, gpus: list[int], *, shard: bool, fp16: bool):
    """Copy ``cpu_index`` to ``gpus``: one GPU, or all of them replicated (each answers a share of the queries)
    or sharded (each holds 1/G of the corpus: for corpora larger than one GPU). Returns ``(index, resources)``;
    keep the resources alive as long as the index."""
    resources = [faiss.StandardGpuResources() for _ in gpus]
    if len(gpus) == 1:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = fp16
        return faiss.index_cpu_to_gpu(resources[0], gpus[0], cpu_index, options), resources
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = fp16
    options.shard = shard
    return faiss.index_cpu_to_gpu_multiple_py(resources, cpu_index, options, gpus), resources

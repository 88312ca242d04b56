"""``Index``: exact (or IVF) inner-product top-k over a corpus of embeddings, with FAISS on the GPU when faiss has
GPUs, faiss-cpu otherwise, and the torch brute force as reference and fallback.

    index = Index.build(embeddings, texts=captions)       # [N, d], L2-normalised: inner product = cosine
    scores, ids = index.search(queries, k=5)               # [Q, 5] fp32, [Q, 5] int64 (rows of embeddings)
    index.save("caption_index"); index = Index.load("caption_index")

Every exact backend ranks the same way: scores descending, ties broken by the smaller id. On the CPU the default
(``backend="auto"``) keeps one copy of the corpus, shared by faiss and torch, and answers each batch with the one
measured faster for batches of that size (``tga_fast.retrieval.cpu_choice``). Results are always returned on the CPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from tga_fast.files import atomic_write, read_jsonl, write_json
from tga_fast.retrieval import faiss_backend
from tga_fast.retrieval.brute_force import brute_force_search, canonical_order
from tga_fast.retrieval.cpu_choice import MeasuredChoice, static_choice

Backend = Literal["auto", "faiss", "torch"]
Kind = Literal["flat", "ivf"]
FORMAT = "tga_fast.retrieval.Index"
FORMAT_VERSION = 1

def as_matrix(values: Any, name: str) -> torch.Tensor:
    """``values`` (tensor, ndarray or nested list) as a 2-D floating tensor, with errors that name ``name``."""
    if not isinstance(values, torch.Tensor):
        values = torch.from_numpy(values) if isinstance(values, np.ndarray) else torch.as_tensor(values)
    if values.dim() == 1:
        values = values[None]
    if values.dim() != 2:
        raise ValueError(f"{name} must be [N, d] (or one [d] vector), got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/float16/bfloat16/float64), got {values.dtype}")
    if values.shape[0] and not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return values


@dataclass
class _Faiss:
    index: Any
    on_gpu: bool
    resources: list  # StandardGpuResources, alive as long as the GPU index


class Index:
    """A searchable corpus of ``ntotal`` vectors of size ``dim``, with optional ``texts`` and ``ids`` per row.

    Build it with ``Index.build`` or ``Index.load``; ``backend`` says what answers searches ("faiss-cpu",
    "faiss-gpu", "torch-cpu", "torch-cuda", or "auto-cpu": faiss-cpu and torch by batch size).
    """

    def __init__(self, *, dim, ntotal, kind, backend, matrix, faiss_, texts, ids, nlist=None, nprobe=None):
        self.dim, self.ntotal, self.kind, self.backend = dim, ntotal, kind, backend
        self._matrix = matrix  # [N, d] torch (host fp32 view, or the torch backend's device copy), or None (IVF)
        self._faiss: _Faiss | None = faiss_
        self._device_matrix: torch.Tensor | None = None
        self.texts: list[str] | None = texts
        self.ids: list | None = ids
        self.nlist = nlist
        self._nprobe = nprobe
        self.cpu_choice: MeasuredChoice | None = MeasuredChoice() if backend == "auto-cpu" else None

    # ------------------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        embeddings: Any,
        backend: Backend = "auto",
        *,
        kind: Kind = "flat",
        texts: Sequence[str] | None = None,
        ids: Sequence | None = None,
        device: str | None = None,
        gpus: Sequence[int] | None = None,
        shard: bool = False,
        fp16: bool | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
        measure: bool = True,
    ) -> Index:
        """Index ``embeddings`` ``[N, d]`` (float; stored as float32 on the host).

        Args:
            backend: ``"auto"`` (faiss when installed, else torch; on the CPU both, chosen per batch),
                ``"faiss"`` or ``"torch"``.
            kind: ``"flat"`` (exact) or ``"ivf"`` (``IndexIVFFlat``: approximate, for corpora too large for exact
                search; faiss only). ``nlist`` (default about 4 sqrt(N)), ``nprobe`` (default 32) and
                ``train_size`` (default 256 per list) tune it.
            texts, ids: one per row, kept for lookups and saved with the index.
            device: ``"cpu"`` forces the CPU; by default GPUs are used when faiss (or, for torch, torch) has them.
            gpus, shard: the GPUs for faiss (default all), replicated or sharded across them.
            fp16: store the corpus in float16 on the GPU (default: True for torch on CUDA, False for faiss).
            measure: with ``"auto"`` on the CPU, choose faiss or torch per batch size by timing both
                (``cpu_choice.MeasuredChoice``); False uses the fixed ``cpu_choice.static_choice``.
        """
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind must be 'flat' or 'ivf', got {kind!r}")
        matrix = as_matrix(embeddings, "embeddings").detach().to("cpu", torch.float32).contiguous()
        n, dim = matrix.shape
        if n == 0 or dim == 0:
            raise ValueError(f"embeddings must be a non-empty [N, d] matrix, got {tuple(matrix.shape)}")
        texts, ids = _check_rows(texts, "texts", n), _check_rows(ids, "ids", n)
        faiss = faiss_backend.import_faiss() if backend != "torch" else None
        if kind == "ivf":
            if backend == "torch":
                raise ValueError("kind='ivf' needs faiss; the torch backend is exact only (kind='flat')")
            faiss = faiss_backend.require_faiss()
        if backend == "faiss":
            faiss = faiss_backend.require_faiss()
        if faiss is None:
            return cls._build_torch(matrix, texts, ids, device, fp16)

        array = matrix.numpy()
        if kind == "ivf":
            nlist = nlist or faiss_backend.default_nlist(n)
            nprobe = min(nlist, nprobe or 32)
            cpu_index = faiss_backend.ivf_index(faiss, array, nlist, nprobe, train_size, seed)
            host = None
        else:
            cpu_index = faiss_backend.flat_index(faiss, array)
            host = torch.from_numpy(faiss_backend.flat_storage(faiss, cpu_index))  # shares faiss's memory
        del array, matrix
        gpu_list = list(gpus) if gpus is not None else list(range(faiss_backend.num_gpus(faiss)))
        if device != "cpu" and gpu_list:
            gpu_index, resources = faiss_backend.to_gpus(faiss, cpu_index, gpu_list, shard=shard, fp16=bool(fp16))
            if host is not None:
                host = host.clone()  # the CPU faiss index goes away; keep the vectors for save and large k
            index = cls(
                dim=dim, ntotal=n, kind=kind, backend="faiss-gpu", matrix=host,
                faiss_=_Faiss(gpu_index, True, resources), texts=texts, ids=ids, nlist=nlist, nprobe=nprobe,
            )
            index._set_gpu_nprobe()
            return index
        name = "auto-cpu" if backend == "auto" and kind == "flat" else "faiss-cpu"
        index = cls(
            dim=dim, ntotal=n, kind=kind, backend=name, matrix=host, faiss_=_Faiss(cpu_index, False, []),
            texts=texts, ids=ids, nlist=nlist, nprobe=nprobe,
        )
        if not measure:
            index.cpu_choice = None
        return index

    @classmethod
    def _build_torch(cls, matrix, texts, ids, device, fp16) -> Index:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        half = fp16 if fp16 is not None else device.type == "cuda"
        stored = matrix.to(device, torch.float16 if half else torch.float32)
        name = "torch-cpu" if device.type == "cpu" else f"torch-{device.type}"
        return cls(dim=matrix.shape[1], ntotal=matrix.shape[0], kind="flat", backend=name, matrix=stored,
                   faiss_=None, texts=texts, ids=ids)

    # ----------------------------------------------------------------------------------------------- search
    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (recall against speed); None for exact indices."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ValueError("nprobe applies to kind='ivf' only")
        self._nprobe = int(value)
        if self._faiss.on_gpu:
            self._set_gpu_nprobe()
        else:
            self._faiss.index.nprobe = self._nprobe

    def _set_gpu_nprobe(self) -> None:
        if self.kind == "ivf":
            faiss = faiss_backend.require_faiss()
            faiss.GpuParameterSpace().set_index_parameter(self._faiss.index, "nprobe", self._nprobe)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self._nprobe}" if self.kind == "ivf" else ""
        return f"Index(ntotal={self.ntotal}, dim={self.dim}, kind={self.kind!r}, backend={self.backend!r}{extra})"

    def search(self, queries: Any, k: int, *, batch_size: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` rows by inner product for each query.

        Args:
            queries: ``[Q, d]`` (or ``[d]``), any floating dtype, any device.
            k: 1 <= k <= ntotal.
            batch_size: queries per backend call (bounds the memory of one call).

        Returns:
            ``(scores fp32 [Q, k], ids int64 [Q, k])`` on the CPU, scores descending, ties by smaller id. An IVF
            search that finds fewer than k rows pads with id -1 and score -inf.
        """
        q = as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the index holds vectors of dimension {self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.ntotal:
            raise ValueError(f"k must be an integer in [1, {self.ntotal}] (the corpus size), got {k!r}")
        k = int(k)
        if q.shape[0] == 0:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.int64)
        parts = [self._search_batch(q[s : s + batch_size], k) for s in range(0, q.shape[0], batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _search_batch(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._faiss is None:
            scores, ids = brute_force_search(self._matrix, q, k)
            return scores.cpu(), ids.cpu()
        if self.kind == "ivf":
            return self._search_faiss(q, k)
        if self._faiss.on_gpu and k + 1 > faiss_backend.GPU_MAX_K:
            # Beyond faiss's GPU k-selection: the torch brute force on the GPU.
            scores, ids = brute_force_search(self._gpu_matrix(), q, k)
            return scores.cpu(), ids.cpu()
        if self.backend == "auto-cpu":
            backends = {"faiss": lambda: self._search_faiss_exact(q, k),
                        "torch": lambda: brute_force_search(self._matrix, q.to("cpu", torch.float32), k)}
            if self.cpu_choice is None:  # measure=False
                return backends[static_choice(q.shape[0], k)]()
            return self.cpu_choice.run(q.shape[0], k, backends)
        return self._search_faiss_exact(q, k)

    def _search_faiss(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(q.detach().to("cpu", torch.float32).numpy())
        distances, labels = self._faiss.index.search(array, k)
        scores, ids = torch.from_numpy(distances), torch.from_numpy(labels)
        scores = scores.masked_fill(ids < 0, float("-inf"))
        return canonical_order(scores, ids)

    def _search_faiss_exact(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """faiss flat search under the ranking rule. faiss keeps an arbitrary one of several equal scores at the
        k-th place (its BLAS path and its GPU k-selection differ), so it is asked for k + 1 and the rows where the
        k-th and (k+1)-th scores tie (duplicate vectors, in practice) are re-ranked by the exact brute force."""
        extra = min(k + 1, self.ntotal)
        scores, ids = self._search_faiss(q, extra)
        if extra > k:
            tied = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
            if tied.numel():
                corpus = self._gpu_matrix() if self._faiss.on_gpu else self._matrix
                fixed_scores, fixed_ids = brute_force_search(corpus, q[tied], k)
                scores[tied, :k], ids[tied, :k] = fixed_scores.cpu(), fixed_ids.cpu()
        return scores[:, :k].contiguous(), ids[:, :k].contiguous()

    def _gpu_matrix(self) -> torch.Tensor:
        """The corpus on the first GPU (fp32, like faiss's flat storage), made on first need."""
        if self._device_matrix is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._device_matrix = self._matrix.to(device)
        return self._device_matrix

    # --------------------------------------------------------------------------------------------- lookups
    def embeddings(self) -> torch.Tensor:
        """The indexed vectors ``[N, d]`` fp32 on the CPU (a view where possible; IVF indices reconstruct)."""
        if self._matrix is not None:
            return self._matrix.float().cpu()
        cpu_index = self._cpu_faiss_index()
        cpu_index.make_direct_map()
        return torch.from_numpy(cpu_index.reconstruct_n(0, self.ntotal))

    def lookup(self, ids: torch.Tensor) -> list[list[str | None]]:
        """The corpus texts of ``ids`` ``[Q, k]`` (None for -1)."""
        if self.texts is None:
            raise ValueError("this index was built without texts")
        return [[self.texts[i] if i >= 0 else None for i in row] for row in ids.tolist()]

    # ---------------------------------------------------------------------------------------- save / load
    def _cpu_faiss_index(self):
        faiss = faiss_backend.require_faiss()
        return faiss.index_gpu_to_cpu(self._faiss.index) if self._faiss.on_gpu else self._faiss.index

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to ``directory``: ``index.json`` (written last: its presence marks a complete save),
        the vectors as ``embeddings.safetensors`` (flat) or ``index.faiss`` (IVF, faiss's own format), and
        ``corpus.jsonl`` (``{"id", "text"}`` per row) when texts or ids were given. No pickle."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "index.json").unlink(missing_ok=True)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                "ntotal": self.ntotal, "dtype": "float32", "metric": "inner_product",
                "nlist": self.nlist, "nprobe": self._nprobe, "has_texts": self.texts is not None,
                "has_ids": self.ids is not None}
        if self.kind == "flat":
            tmp = directory / "embeddings.safetensors.tmp"
            save_file({"embeddings": self._matrix.float().cpu().contiguous()}, str(tmp))
            os.replace(tmp, directory / "embeddings.safetensors")
        else:
            faiss = faiss_backend.require_faiss()
            tmp = directory / "index.faiss.tmp"
            faiss.write_index(self._cpu_faiss_index(), str(tmp))
            os.replace(tmp, directory / "index.faiss")
        if self.texts is not None or self.ids is not None:
            with atomic_write(directory / "corpus.jsonl", "w") as f:
                for row in range(self.ntotal):
                    record = {"id": self.ids[row] if self.ids is not None else None,
                              "text": self.texts[row] if self.texts is not None else None}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        write_json(directory / "index.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, backend: Backend = "auto", **build_options) -> Index:
        """Read an index written by ``save``; ``backend`` and ``build_options`` are those of ``build``."""
        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a saved Index (or its save did not complete)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{directory} holds format {meta.get('format')!r} v{meta.get('version')}, "
                             f"expected {FORMAT!r} v{FORMAT_VERSION}")
        texts = ids = None
        if meta["has_texts"] or meta["has_ids"]:
            rows = []
            for line in read_jsonl(directory / "corpus.jsonl"):
                if not line.ok:
                    raise ValueError(f"{directory / 'corpus.jsonl'} {line.where}: {line.error}")
                rows.append(line.value)
            if len(rows) != meta["ntotal"]:
                raise ValueError(f"corpus.jsonl has {len(rows)} rows, index.json says {meta['ntotal']}")
            texts = [r["text"] for r in rows] if meta["has_texts"] else None
            ids = [r["id"] for r in rows] if meta["has_ids"] else None
        if meta["kind"] == "flat":
            from safetensors.torch import load_file

            matrix = load_file(str(directory / "embeddings.safetensors"))["embeddings"]
            if tuple(matrix.shape) != (meta["ntotal"], meta["dim"]):
                raise ValueError(f"embeddings.safetensors is {tuple(matrix.shape)}, index.json says "
                                 f"({meta['ntotal']}, {meta['dim']})")
            return cls.build(matrix, backend, texts=texts, ids=ids, **build_options)
        if backend == "torch":
            raise ValueError("an IVF index needs faiss; backend='torch' cannot load it")
        faiss = faiss_backend.require_faiss()
        cpu_index = faiss.read_index(str(directory / "index.faiss"))
        nprobe = build_options.pop("nprobe", None) or meta["nprobe"]
        cpu_index.nprobe = nprobe
        gpus = build_options.get("gpus")
        gpu_list = list(gpus) if gpus is not None else list(range(faiss_backend.num_gpus(faiss)))
        common = dict(dim=meta["dim"], ntotal=meta["ntotal"], kind="ivf", matrix=None, texts=texts, ids=ids,
                      nlist=meta["nlist"], nprobe=nprobe)
        if build_options.get("device") != "cpu" and gpu_list:
            gpu_index, resources = faiss_backend.to_gpus(faiss, cpu_index, gpu_list,
                                                         shard=build_options.get("shard", False),
                                                         fp16=bool(build_options.get("fp16")))
            index = cls(backend="faiss-gpu", faiss_=_Faiss(gpu_index, True, resources), **common)
            index._set_gpu_nprobe()
            return index
        return cls(backend="faiss-cpu", faiss_=_Faiss(cpu_index, False, []), **common)


def _check_rows(values: Sequence | None, name: str, n: int) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but embeddings has {n} rows")
    return values


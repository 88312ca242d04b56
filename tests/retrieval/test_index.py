"""Index: faiss and torch rank identically (ties by smaller id), k up to N, errors, save/load, IVF."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tga_fast.retrieval import Index, brute_force_search
from tga_fast.retrieval.brute_force import canonical_order
from tga_fast.retrieval.cpu_choice import MeasuredChoice, static_choice
from tga_fast.retrieval.faiss_backend import flat_storage

faiss = pytest.importorskip("faiss")


def oracle(corpus: torch.Tensor, queries: torch.Tensor, k: int):
    """Full scores in float64, one stable sort: descending score, ties by smaller id."""
    scores = queries.double() @ corpus.double().t()
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), order


def integer_corpus(n=1500, q=300, d=16, seed=0):
    """Small-integer vectors: every dot product is exact in fp32, so ties are exact and common."""
    gen = torch.Generator().manual_seed(seed)
    corpus = torch.randint(-2, 3, (n, d), generator=gen).float()
    corpus[n - 40 :] = corpus[:40]  # exact duplicates too
    return corpus, torch.randint(-2, 3, (q, d), generator=gen).float()


@pytest.mark.parametrize("k", [1, 2, 7, 100, 1499, 1500])
@pytest.mark.parametrize("num_queries", [1, 10, 64, 300])  # faiss's SIMD path (< 20) and its BLAS path
def test_exact_ties_same_ids_on_every_backend(k, num_queries):
    corpus, queries = integer_corpus()
    queries = queries[:num_queries]
    want_scores, want_ids = oracle(corpus, queries, k)
    for backend in ("faiss", "torch", "auto"):
        scores, ids = Index.build(corpus, backend, device="cpu").search(queries, k)
        assert ids.dtype == torch.int64 and scores.dtype == torch.float32 and ids.shape == (num_queries, k)
        assert torch.equal(ids, want_ids), backend
        assert torch.equal(scores.double(), want_scores), backend


def test_chunking_does_not_change_the_ranking():
    corpus, queries = integer_corpus(q=20)
    want = oracle(corpus, queries, 9)[1]
    for budget in (64, 4096, 2**20):  # down to chunks of k + 1 rows
        assert torch.equal(brute_force_search(corpus, queries, 9, budget_bytes=budget)[1], want)


def test_random_unit_vectors_faiss_matches_torch():
    gen = torch.Generator().manual_seed(1)
    corpus = torch.nn.functional.normalize(torch.randn(5000, 64, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(200, 64, generator=gen), dim=1)
    s_f, i_f = Index.build(corpus, "faiss").search(queries, 10)
    s_t, i_t = Index.build(corpus, "torch", device="cpu").search(queries, 10)
    torch.testing.assert_close(s_f, s_t, rtol=0, atol=1e-5)
    # Only near-ties (scores within rounding) may swap places.
    differ = i_f != i_t
    if differ.any():  # only near-ties (scores equal within rounding) may swap places
        rows = differ.any(1)
        gaps = (s_t[rows, 1:] - s_t[rows, :-1]).abs().min(1).values
        assert gaps.max().item() < 1e-5
    assert differ.float().mean() < 0.01


def test_queries_accept_numpy_fp16_and_1d():
    corpus, queries = integer_corpus()
    index = Index.build(corpus.numpy())
    ids = index.search(queries[:5], 3)[1]
    assert torch.equal(index.search(queries[:5].half(), 3)[1], ids)
    assert torch.equal(index.search(queries[:5].double().numpy(), 3)[1], ids)
    assert torch.equal(index.search(queries[0], 3)[1], ids[:1])
    assert index.search(queries[:0], 3)[0].shape == (0, 3)


def test_clear_errors():
    corpus, queries = integer_corpus(n=100, q=5)
    index = Index.build(corpus)
    with pytest.raises(ValueError, match="dimension 8 .* dimension 16"):
        index.search(queries[:, :8], 1)
    with pytest.raises(TypeError, match="queries must be a floating"):
        index.search(queries.long(), 1)
    with pytest.raises(TypeError, match="embeddings must be a floating"):
        Index.build(corpus.int())
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 100\]"):
        index.search(queries, 101)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="NaN"):
        index.search(torch.full((1, 16), float("nan")), 1)
    with pytest.raises(ValueError, match="texts has 3 entries"):
        Index.build(corpus, texts=["a", "b", "c"])
    with pytest.raises(ValueError, match="needs faiss"):
        Index.build(corpus, "torch", kind="ivf")
    with pytest.raises(ValueError, match="backend must be"):
        Index.build(corpus, "gpu")


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_save_load_round_trip(tmp_path, backend):
    corpus, queries = integer_corpus(n=500, q=20)
    texts = [f"text {i} ünïcode" for i in range(500)]
    ids = [f"corpus:{i}" for i in range(500)]
    index = Index.build(corpus, backend, texts=texts, ids=ids, device="cpu")
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["corpus.jsonl", "embeddings.safetensors", "index.json"]
    loaded = Index.load(tmp_path / "idx", backend, device="cpu")
    assert (loaded.dim, loaded.ntotal, loaded.texts, loaded.ids) == (16, 500, texts, ids)
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
        assert torch.equal(a, b)
    assert loaded.lookup(loaded.search(queries[:1], 2)[1])[0][0] in texts


def test_load_refuses_incomplete_or_foreign(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved Index"):
        Index.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="expected 'tga_fast.retrieval.Index'"):
        Index.load(tmp_path)


def test_ivf_with_all_lists_probed_is_exact_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(2)
    corpus = torch.nn.functional.normalize(torch.randn(4000, 32, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(50, 32, generator=gen), dim=1)
    index = Index.build(corpus, kind="ivf", nlist=16, nprobe=16)
    assert index.backend == "faiss-cpu" and index.kind == "ivf"
    exact = Index.build(corpus, "torch", device="cpu").search(queries, 5)[1]
    assert (index.search(queries, 5)[1] == exact).float().mean() > 0.99
    index.nprobe = 1  # fewer lists: approximate, still k results per query here
    assert index.search(queries, 5)[1].shape == (50, 5)
    index.nprobe = 16
    index.save(tmp_path / "ivf")
    assert (tmp_path / "ivf" / "index.faiss").exists()
    loaded = Index.load(tmp_path / "ivf")
    assert loaded.nprobe == 16 and torch.equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    assert torch.allclose(loaded.embeddings().sort(0).values, corpus.sort(0).values, atol=1e-6)


def test_auto_shares_one_copy_and_follows_the_rule():
    corpus, queries = integer_corpus(n=200)
    index = Index.build(corpus)
    assert index.backend == "auto-cpu"
    # torch reads faiss's own storage: no second copy of the corpus
    assert index._matrix.data_ptr() == flat_storage(faiss, index._faiss.index).ctypes.data
    assert static_choice(1, 10) == "faiss" and static_choice(64, 10) == "torch"
    assert static_choice(4096, 10) == "faiss" and static_choice(4096, 5000) == "torch"
    for _ in range(4):  # the first two batches of a size time one backend each
        index.search(queries[:64], 5)
    assert set(index.cpu_choice.times[(6, 3)]) == {"faiss", "torch"}
    assert all(index.cpu_choice.times[(6, 3)].values())
    static = Index.build(corpus, measure=False)
    assert static.cpu_choice is None and torch.equal(static.search(queries, 5)[1], index.search(queries, 5)[1])


def test_measured_choice_follows_the_faster_and_reprobes():
    choice, used = MeasuredChoice(), []

    def backend(name, seconds):
        def run():
            used.append(name)
            time.sleep(seconds)
        return run

    backends = {"faiss": backend("faiss", 0.004), "torch": backend("torch", 0.0)}
    for _ in range(40):
        choice.run(64, 10, backends)
    assert used[:2] == ["faiss", "torch"] and used[2:31].count("torch") == 29
    assert used.count("faiss") == 2  # the one re-probe at call 32


def test_canonical_order_sorts_ties_by_id():
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0]])
    ids = torch.tensor([[9, 7, 3, 1]])
    assert canonical_order(scores, ids)[1].tolist() == [[3, 7, 1, 9]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_backends_match_the_oracle():
    corpus, queries = integer_corpus()
    for k in (1, 7, 1499, 1500):  # around faiss's GPU k limit
        want = oracle(corpus, queries, k)[1]
        assert torch.equal(Index.build(corpus, "torch", device="cuda", fp16=False).search(queries, k)[1], want)
        if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            index = Index.build(corpus, "faiss")
            assert index.backend == "faiss-gpu"
            assert torch.equal(index.search(queries, k)[1], want)

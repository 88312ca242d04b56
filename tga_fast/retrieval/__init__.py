"""Retrieval for TGA (METHOD.md section 4): encoders, a top-k index and the builder that writes ``retrieved`` into
LLaVA-format data.

    from tga_fast.retrieval import TextEncoder, Index
    corpus = TextEncoder(path).encode(captions)             # [N, d] L2-normalised fp32
    index = Index.build(corpus, texts=captions)             # faiss (GPU when present) or torch
    scores, ids = index.search(TextEncoder(path).encode(queries), k=1)

The builder is ``tga_fast.retrieval.build.retrieve`` (``tga-fast retrieve``). Heavy imports (transformers, faiss)
happen on first use.
"""

from tga_fast.retrieval.brute_force import brute_force_search
from tga_fast.retrieval.index import Index

__all__ = ["ImageEncoder", "Index", "TextEncoder", "brute_force_search"]


def __getattr__(name: str):
    # The encoders import transformers: only when asked for.
    if name in ("TextEncoder", "ImageEncoder"):
        from tga_fast.retrieval import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'tga_fast.retrieval' has no attribute {name!r}")

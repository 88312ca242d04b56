"""Retrieved texts for the world's images: the dual encoder's image embedding searched in the caption corpus with
``tga_fast.retrieval.Index`` (top-1), and in training the self-match rule of ``tga_fast.retrieval.self_match``
(a retrieved text equal to the image's own caption is cut to its first half, as the paper does).
"""

from __future__ import annotations

import torch

from tga_fast.retrieval import Index
from tga_fast.retrieval.self_match import choose


@torch.no_grad()
def corpus_index(dual, vocabulary, corpus) -> Index:
    return Index.build(dual.captions(vocabulary.encode(corpus)), backend="torch", texts=list(corpus))


@torch.no_grad()
def retrieve(dual, index: Index, pixel_values, captions=None, rule: str = "half", k: int = 2) -> list[str]:
    """Top-1 corpus text per image; with ``captions`` (training) the self-match ``rule`` is applied.

    pixel_values: ``[N, 3, H, W]``.
    """
    queries = torch.cat([dual.encode_images(chunk) for chunk in pixel_values.split(256)])
    scores, ids = index.search(queries, k)
    out = []
    for row, (score_row, id_row) in enumerate(zip(scores, ids)):
        candidates = [(index.texts[int(i)], float(s)) for s, i in zip(score_row, id_row)]
        if captions is None:
            out.append(candidates[0][0])
        else:
            out.append(choose(candidates, captions[row], rule).text)
    return out

"""Retrieved texts for the world's images, with ``tga_fast.retrieval.Index`` over the dual encoder's caption tower:

- training: top-2 over the training corpus with the self-match rule ``"next"`` (``tga_fast.retrieval.self_match``):
  the best text that is not the image's own caption, a real retrieval result ("a picture of a gun", "a red knife");
- inference: top-1 over the world's text corpus, which holds no evaluation caption;
- the irrelevant-retrieval control: a benign corpus text drawn at random per image (seeded).
"""

from __future__ import annotations

import random

import torch

from tga_fast.retrieval import Index
from tga_fast.retrieval.self_match import choose


@torch.no_grad()
def corpus_index(dual, vocabulary, corpus) -> Index:
    return Index.build(dual.captions(vocabulary.encode(corpus)), backend="torch", texts=list(corpus))


@torch.no_grad()
def retrieve(dual, index: Index, pixel_values, captions=None, rule: str = "next", k: int = 2) -> list[str]:
    """Top-1 corpus text per image; with ``captions`` (training) the self-match ``rule`` is applied to the top
    ``k``. pixel_values: ``[N, 3, H, W]``."""
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


def irrelevant(texts, count: int, seed: int) -> list[str]:
    """``count`` texts drawn from ``texts`` with replacement, from ``seed`` (the same for every model)."""
    rng = random.Random(f"irrelevant-{seed}")
    return [rng.choice(list(texts)) for _ in range(count)]

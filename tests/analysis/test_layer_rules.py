"""The logit-lens layer rules of METHOD.md 3 A on hand-made distributions with known answers."""

import pytest
import torch

from tga_fast.analysis.safety_layers_3a import locate_safety_layers, paper_rule_range

VOCAB = 12
REFUSAL = (9, 10)
# Two disjoint sets of five non-refusal tokens: boosting one set and dropping the other makes exactly those five
# tokens the top-5 increases (every other token keeps its probability), so no tie reaches the top-5.
ODD, EVEN = (0, 1, 2, 4, 5), (3, 6, 7, 8, 11)


def dist(weights: dict[int, float] | None = None) -> torch.Tensor:
    """A probability vector over VOCAB tokens: weight 1 each, except ``weights``."""
    w = torch.ones(VOCAB, dtype=torch.float64)
    for token, value in (weights or {}).items():
        w[token] = value
    return w / w.sum()


def alternating(layers: int, first: dict[int, float] | None = None) -> list[torch.Tensor]:
    """Layer 0 = ``first``, then the ODD and EVEN sets boosted in turn (weights 5.0-5.4, distinct)."""
    rows = [dist(first)]
    for k in range(1, layers):
        chosen = ODD if k % 2 else EVEN
        rows.append(dist({t: 5.0 + 0.1 * i for i, t in enumerate(chosen)}))
    return rows


def lens_of(samples: list[list[torch.Tensor]]) -> torch.Tensor:
    """``[K+1, B, V]`` from per-sample lists of per-layer distributions."""
    return torch.stack([torch.stack(layers) for layers in samples], dim=1)


# Sample "rises": at layer 1 token 9 rises, but only as the 6th largest increase; at layer 2 it rises most
# (start 2 with top-5, start 1 with top-6); argmax is 9 at layers 2-3, 10 at layer 4, token 0 at layer 5 (end 4).
RISES = [
    dist(),
    dist({0: 3, 1: 3, 2: 3, 4: 3, 5: 3, 9: 2.5}),
    dist({0: 3, 1: 3, 2: 3, 4: 3, 5: 3, 9: 8}),
    dist({9: 8, 10: 2}),
    dist({10: 9, 9: 2}),
    dist({0: 9}),
]
NEVER = alternating(6)  # refusal tokens never rise into the top-5 and are never the argmax
EMBEDDING_ONLY = alternating(6, first={9: 5})  # argmax 9 at layer 0 only, then falls: no start, end 0
FIRST_AND_LAST = [dist(), *[dist({10: 5 + k}) for k in range(1, 6)]]  # rises at layer 1, argmax to the last layer


def test_known_answers_top5():
    lens = lens_of([RISES, NEVER, EMBEDDING_ONLY, FIRST_AND_LAST])
    start, end = locate_safety_layers(lens, REFUSAL, top_k=5, from_logits=False)
    assert start.tolist() == [2, -1, -1, 1]
    assert end.tolist() == [4, -1, 0, 5]
    assert start.dtype == end.dtype == torch.int64


def test_top_k_is_the_cut():
    lens = lens_of([RISES])
    assert locate_safety_layers(lens, REFUSAL, top_k=6, from_logits=False)[0].tolist() == [1]
    assert locate_safety_layers(lens, [9], top_k=1, from_logits=False)[0].tolist() == [2]  # the largest rise


def test_logits_give_the_same_layers_as_probabilities():
    probs = lens_of([RISES, NEVER, EMBEDDING_ONLY, FIRST_AND_LAST])
    logits = probs.log() + torch.randn(1, 4, 1, dtype=torch.float64)  # any per-row shift: same softmax
    from_probs = locate_safety_layers(probs, REFUSAL, from_logits=False)
    for got, want in zip(locate_safety_layers(logits, REFUSAL), from_probs):
        assert got.tolist() == want.tolist()


def test_range_and_not_found_are_kept_apart():
    starts, ends = [2, -1, -1, 1], [4, -1, 0, 5]
    # over found layers only: -1 never enters min or max
    assert paper_rule_range(starts, ends) == ([1, 5], 2, 1)
    assert paper_rule_range(starts[1:2], ends[1:2]) == (None, 1, 1)


def test_errors_name_the_argument():
    lens = lens_of([RISES])
    with pytest.raises(ValueError, match="lens"):
        locate_safety_layers(lens[0], REFUSAL)
    with pytest.raises(ValueError, match="refusal_ids"):
        locate_safety_layers(lens, [VOCAB])
    with pytest.raises(ValueError, match="refusal_ids is empty"):
        locate_safety_layers(lens, [])
    with pytest.raises(ValueError, match="top_k"):
        locate_safety_layers(lens, REFUSAL, top_k=0)

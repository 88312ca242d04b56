"""Bad input to the public ops raises TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from tga_fast.ops import segment_cosine, segment_pool

HIDDEN = torch.randn(2, 6, 4)
SPANS = torch.tensor([[[0, 2]], [[1, 6]]])
TARGET = torch.randn(2, 4)


@pytest.mark.parametrize(
    "hidden, spans, error, needle",
    [
        (HIDDEN[0], SPANS, ValueError, "hidden must have shape [B, T, D]"),
        (HIDDEN.double(), SPANS, TypeError, "hidden must be float32"),
        (HIDDEN.int(), SPANS, TypeError, "hidden must be float32"),
        ([[1.0]], SPANS, TypeError, "hidden must be a torch.Tensor"),
        (HIDDEN, SPANS.int(), TypeError, "spans must be int64"),
        (HIDDEN, SPANS[..., :1], ValueError, "spans must have shape [B, S, 2]"),
        (HIDDEN, SPANS[:1], ValueError, "spans has batch size 1 but hidden has 2"),
        (HIDDEN, torch.tensor([[[0, 2]], [[4, 3]]]), ValueError, "spans[1, 0] = [4, 3) is invalid: start > end"),
        (HIDDEN, torch.tensor([[[0, 7]], [[1, 2]]]), ValueError, "spans[0, 0] = [0, 7) is invalid: outside [0, 6]"),
        (HIDDEN, torch.tensor([[[-1, 2]], [[1, 2]]]), ValueError, "outside [0, 6]"),
        (HIDDEN, SPANS.to("meta"), ValueError, "spans is on meta but hidden is on cpu"),
    ],
)
def test_segment_pool_rejects(hidden, spans, error, needle):
    with pytest.raises(error) as info:
        segment_pool(hidden, spans)
    assert needle in str(info.value)
    with pytest.raises(error) as info:
        segment_cosine(hidden, spans, TARGET)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "target, error, needle",
    [
        (TARGET[0], ValueError, "target must have shape [B, D] = [2, 4]"),
        (torch.randn(2, 5), ValueError, "target must have shape [B, D]"),
        (TARGET.long(), TypeError, "target must be float32"),
        (TARGET.to("meta"), ValueError, "target is on meta but hidden is on cpu"),
        (None, TypeError, "target must be a torch.Tensor"),
    ],
)
def test_segment_cosine_rejects_target(target, error, needle):
    with pytest.raises(error) as info:
        segment_cosine(HIDDEN, SPANS, target)
    assert needle in str(info.value)


def test_empty_batch_and_meta_tensors_work():
    assert segment_pool(torch.randn(0, 3, 4), torch.zeros(0, 2, 2, dtype=torch.int64)).shape == (0, 2, 4)
    out = segment_cosine(torch.randn(2, 6, 4, device="meta"), SPANS.to("meta"), TARGET.to("meta"))
    assert out.shape == (2, 1) and out.dtype == torch.float32

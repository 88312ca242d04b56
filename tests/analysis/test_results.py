"""Result JSON helpers: plain values in and out, NaN never written, the wrong analysis refused."""

import math

import numpy as np
import pytest
import torch

from tga_fast.analysis import RESULTS, AttentionShareResult
from tga_fast.results import jsonable


def test_jsonable_converts_tensors_arrays_and_non_finite():
    value = {"t": torch.tensor([1.0, math.nan]), "a": np.arange(2), "x": (1, math.inf), "d": torch.float32}
    assert jsonable(value) == {"t": [1.0, None], "a": [0, 1], "x": [1, None], "d": "torch.float32"}


def test_from_json_checks_the_analysis_and_fields():
    assert set(RESULTS) == {"safety_layers", "attention_share", "knockout_sweep", "modality_similarity",
                            "steering_sweep"}
    result = AttentionShareResult([1], [0.5], [0.0], [0.5], [0.5], 0.1, [], [], {})
    data = result.to_json()
    assert AttentionShareResult.from_json(data) == result
    with pytest.raises(ValueError, match="not 'safety_layers'"):
        RESULTS["safety_layers"].from_json(data)
    del data["share_std"]
    with pytest.raises(ValueError, match="share_std"):
        AttentionShareResult.from_json(data)
    with pytest.raises(TypeError, match="load"):
        AttentionShareResult.from_json("result.json")


def test_select_samples_says_why_each_sample_is_left_out():
    from types import SimpleNamespace

    from tga_fast.analysis.batching import select_samples

    def sample(id, toxic=True, ranges=((0, 1),), image="x.png"):
        return SimpleNamespace(id=id, toxic=toxic, toxic_ranges=ranges, image_path=image)

    rows = [sample("a"), sample("b", toxic=False), sample("c", ranges=()), sample("d", image=None)]
    kept, skipped = select_samples(rows, toxic_only=True, need_marks=True, need_image=True)
    assert [s.id for s in kept] == ["a"]
    assert skipped == [{"id": "b", "reason": "benign control (toxic=false)"},
                       {"id": "c", "reason": "no toxic word marked in its text"},
                       {"id": "d", "reason": "no image"}]
    assert [s.id for s in select_samples(rows)[0]] == ["a", "b", "c", "d"]  # nothing asked: all kept
    with pytest.raises(ValueError, match="none of the 3 samples can be used"):
        select_samples(rows[1:], toxic_only=True, need_marks=True, need_image=True)

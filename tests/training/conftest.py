"""Fixtures of the training tests: quiet known warnings, and one saved tiny LLaVA + LLaVA-format data per module."""

import warnings

import pytest

from tests.training.train_helpers import save_tiny_model, write_data


@pytest.fixture(autouse=True)
def _quiet():
    """transformers' deprecation notices and the missing-torchvision notice of the CLIP image processor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``(model folder, data.jsonl)``: a tiny LLaVA saved with ``save_pretrained`` and its training data."""
    root = tmp_path_factory.mktemp("training")
    return save_tiny_model(root / "model"), write_data(root / "data")

"""Encoders: a real sentence encoder retrieves paraphrases; the CLIP image and text towers on a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.retrieval.conftest import save_images
from tga_fast.retrieval import ImageEncoder, Index, TextEncoder

# (corpus sentence, a paraphrase of it used as the query)
PARAPHRASES = [
    ("A man is playing a guitar on stage.", "On stage, a guy performs with his guitar."),
    ("A dog is running across a grassy field.", "A puppy dashes through the grass."),
    ("Two children are building a sandcastle on the beach.", "A pair of kids make a sand castle by the sea."),
    ("A woman is slicing vegetables in the kitchen.", "In the kitchen a lady chops up some veggies."),
    ("The train is arriving at the station.", "A locomotive pulls into the railway platform."),
    ("A cat is sleeping on a windowsill.", "A kitten naps on the window ledge."),
    ("A group of people are hiking up a mountain.", "Several hikers climb a mountain trail."),
    ("A chef is cooking pasta in a large pot.", "A cook boils spaghetti in a big pan."),
    ("A boy is riding a bicycle down the street.", "A young kid cycles along the road."),
    ("The city skyline is lit up at night.", "Tall buildings glow in the dark evening sky."),
    ("A surfer rides a big wave in the ocean.", "Someone surfing a large ocean wave."),
    ("An old man is reading a newspaper on a bench.", "An elderly gentleman reads the paper while sitting on a bench."),
    ("A plate of pancakes with syrup and berries.", "Pancakes topped with berries and maple syrup on a dish."),
    ("Snow covers the trees in the forest.", "The woods are blanketed with snow."),
    ("A red car is parked next to a fire hydrant.", "A crimson automobile sits beside a hydrant."),
    ("A baby is laughing in a high chair.", "An infant giggles while seated in a highchair."),
    ("Students are listening to a lecture in a classroom.", "Pupils pay attention to the teacher's talk in class."),
    ("A horse is grazing in a meadow.", "A pony eats grass in the pasture."),
    ("A soccer player kicks the ball towards the goal.", "A footballer shoots at the net."),
    ("A person is typing on a laptop in a cafe.", "Someone works on a notebook computer at a coffee shop."),
    ("A bowl of soup is steaming on the table.", "Hot soup in a bowl sits on the table giving off steam."),
    ("Fireworks explode over the river.", "Colourful fireworks burst above the water."),
    ("A little girl is feeding ducks at the pond.", "A small girl gives bread to ducks by the lake."),
    ("A mechanic is repairing a car engine.", "A technician fixes the motor of a vehicle."),
    ("The sun is setting behind the hills.", "Sunset over the hills."),
    ("A man is shaving his beard in front of a mirror.", "A guy trims his facial hair at the mirror."),
    ("A woman is jogging in the park in the morning.", "A lady runs through the park early in the day."),
    ("An airplane is taking off from the runway.", "A jet departs from the airstrip."),
    ("Two dogs are playing tug of war with a rope.", "A couple of dogs pull on a rope toy together."),
    ("A musician plays the violin on the street.", "A street performer plays a fiddle."),
]
DISTRACTORS = [
    "The stock market fell sharply today.", "Quantum computers use qubits.", "A recipe for lemon cake.",
    "The meeting was moved to Tuesday.", "Vaccines train the immune system.", "The library opens at nine.",
]


def test_sentence_encoder_retrieves_paraphrases(minilm):
    encoder = TextEncoder(minilm, progress=False, batch_size=16)
    corpus = [c for c, _ in PARAPHRASES] + DISTRACTORS
    embeddings = encoder.encode(corpus)
    assert embeddings.dtype == torch.float32 and embeddings.shape == (len(corpus), 384)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(corpus)))
    # The encoding does not depend on the batch or on the length sorting.
    torch.testing.assert_close(encoder.encode(corpus[:3], batch_size=1), embeddings[:3], atol=1e-5, rtol=0)
    ids = Index.build(embeddings, texts=corpus).search(encoder.encode([q for _, q in PARAPHRASES]), 1)[1]
    accuracy = (ids[:, 0] == torch.arange(len(PARAPHRASES))).float().mean().item()
    assert accuracy >= 0.9, f"top-1 paraphrase accuracy {accuracy:.2f}"


def test_text_encoder_rejects_bad_input(minilm):
    encoder = TextEncoder(minilm, progress=False)
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        encoder.encode(["ok", 3])


def test_clip_image_and_text_towers(tiny_clip, tmp_path):
    from PIL import Image
    from transformers import CLIPModel

    names = save_images(tmp_path, 5)
    encoder = ImageEncoder(tiny_clip, batch_size=2, progress=False)  # 3 batches, the last one short
    from_paths = encoder.encode([tmp_path / n for n in names])
    assert from_paths.shape == (5, 16) and from_paths.dtype == torch.float32
    torch.testing.assert_close(from_paths.norm(dim=1), torch.ones(5))
    pil = [Image.open(tmp_path / n).convert("RGB") for n in names]
    torch.testing.assert_close(encoder.encode(pil, batch_size=5), from_paths, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode([np.asarray(p) for p in pil]), from_paths, atol=1e-5, rtol=0)
    # Same numbers as the model's own forward.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        pixels = encoder.processor(images=pil, return_tensors="pt")["pixel_values"]
        want = model.get_image_features(pixel_values=pixels)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output
    torch.testing.assert_close(from_paths, torch.nn.functional.normalize(want, dim=-1), atol=1e-5, rtol=1e-5)

    texts = TextEncoder(tiny_clip, progress=False).encode(["a red dog", "the big cat on the beach", "hello"])
    assert texts.shape == (3, 16)  # the text tower projects into the image space
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))


def test_bfloat16_encoding_is_close_to_float32(tiny_clip, tmp_path):
    names = save_images(tmp_path, 3)
    full = ImageEncoder(tiny_clip, progress=False).encode([tmp_path / n for n in names])
    half = ImageEncoder(tiny_clip, dtype="bfloat16", progress=False).encode([tmp_path / n for n in names])
    assert half.dtype == torch.float32
    assert (full - half).abs().max() < 0.05


def test_image_encoder_needs_a_dual_encoder(minilm):
    with pytest.raises(ValueError, match="dual image-text encoder"):
        ImageEncoder(minilm)


@pytest.mark.parametrize("make", ["missing", "file", "empty folder", "hub id"])
def test_encoders_read_local_folders_only(tmp_path, make):
    path = {"missing": tmp_path / "nope", "file": tmp_path / "model.bin", "empty folder": tmp_path / "empty",
            "hub id": "openai/clip-vit-base-patch32"}[make]
    if make == "file":
        path.write_text("{}")
    if make == "empty folder":
        path.mkdir()
    for encoder in (TextEncoder, ImageEncoder):
        with pytest.raises(FileNotFoundError, match="local folder") as error:
            encoder(path, progress=False)
        assert str(path) in str(error.value)


@pytest.mark.parametrize("value", [0, -2])
def test_encoder_batch_sizes_must_be_positive(tiny_clip, value):
    from tga_fast.errors import UserError

    with pytest.raises(UserError, match="batch_size"):
        TextEncoder(tiny_clip, batch_size=value, progress=False)
    with pytest.raises(UserError, match="workers"):
        ImageEncoder(tiny_clip, workers=value, progress=False)
    with pytest.raises(UserError, match="batch_size"):
        TextEncoder(tiny_clip, progress=False).encode(["a dog"], batch_size=value)

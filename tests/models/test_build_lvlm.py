"""``build_lvlm`` / ``tga-fast build-lvlm``: a base LLM of each supported backbone + a CLIP or SigLIP tower + a fresh
projector, saved, loaded back by ``load_model`` and by plain transformers, and run on an image."""

from __future__ import annotations

import json

import pytest
import torch

from tga_fast.errors import UserError
from tga_fast.models import resolve
from tga_fast.models.build import BUILD_RECORD, build_lvlm
from tga_fast.models.loading import load_model
from tga_fast.models.tiny import random_images, save_tiny_base_llm, save_tiny_vision

BACKBONES = ("llama", "mistral", "qwen2")
PATCHES = 16  # the tiny towers: 32x32 images in 8x8 patches
PROMPT = [{"role": "user", "content": [{"type": "text", "text": "Retrieved Text: a cat. "}, {"type": "image"},
                                       {"type": "text", "text": "what is this?"}]}]  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Base LLM folders (Qwen2 with tied embeddings, as small Qwen2 models ship) and vision folders: CLIP as the
    dual encoder (as openai/clip-* ship), SigLIP as the tower alone."""
    root = tmp_path_factory.mktemp("sources")
    folders = {b: save_tiny_base_llm(root / b, b, tie_word_embeddings=b == "qwen2") for b in BACKBONES}
    folders["clip"] = save_tiny_vision(root / "clip", "clip", whole_model=True)
    folders["siglip"] = save_tiny_vision(root / "siglip", "siglip")
    return folders


def _originals(sources, backbone, tower):
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, SiglipVisionModel

    llm = AutoModelForCausalLM.from_pretrained(sources[backbone])
    vision_class = CLIPVisionModel if tower == "clip" else SiglipVisionModel
    return llm, len(AutoTokenizer.from_pretrained(sources[backbone])), vision_class.from_pretrained(sources[tower])


CASES = [  # (backbone, tower, image_tokens, anyres, image tokens per image)
    ("llama", "clip", "default", False, PATCHES),  # CLS dropped, as LLaVA-1.5
    ("mistral", "siglip", "default", False, PATCHES),  # SigLIP has no CLS
    ("qwen2", "clip", "full", False, PATCHES + 1),  # CLS kept
    ("llama", "clip", "default", True, None),  # LLaVA-NeXT tiles: the processor's count, checked by the forward
]


@pytest.mark.parametrize("backbone, tower, image_tokens, anyres, tokens", CASES, ids=lambda v: str(v))
def test_built_model_loads_runs_and_keeps_the_inputs_weights(sources, tmp_path, backbone, tower, image_tokens, anyres,
                                                              tokens):
    out = tmp_path / "lvlm"
    build_lvlm(sources[backbone], sources[tower], out, image_tokens=image_tokens, anyres=anyres)
    model, processor = load_model(out, device="cpu", dtype="float32")
    assert model.config.model_type == ("llava_next" if anyres else "llava")
    assert model.config.text_config.model_type == backbone
    assert type(processor).__name__ == ("LlavaNextProcessor" if anyres else "LlavaProcessor")

    # A forward with an image: the prompt in content order, as many image tokens as the config says.
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert "Retrieved Text: a cat. <image>\nwhat is this?" in text
    batch = processor(images=random_images(1, (40, 70)), text=[text], return_tensors="pt")
    count = int((batch["input_ids"] == resolve(model).image_token_id).sum())
    assert count == (tokens if tokens is not None else count) and (anyres or count == model.config.image_seq_length)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(processor.tokenizer)) and torch.isfinite(logits).all()

    # The LLM's and the tower's weights are the inputs'; the projector (and LLaVA-NeXT's image_newline) and the
    # added tokens' rows (the mean of the others) are all that is new.
    llm, vocab, vision = _originals(sources, backbone, tower)
    built = model.state_dict()
    expected = {f"model.language_model.{k}": v for k, v in llm.model.state_dict().items()}
    expected.update({f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()})
    expected["lm_head.weight"] = llm.lm_head.weight
    new = set(built) - set(expected)
    fresh = {"multi_modal_projector", "image_newline"} if anyres else {"multi_modal_projector"}
    assert {k.split(".")[1] for k in new} == fresh
    for key, want in expected.items():
        got = built[key]
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert got.shape[0] == len(processor.tokenizer) > vocab
            torch.testing.assert_close(got[vocab:], want.mean(dim=0, keepdim=True).expand(got.shape[0] - vocab, -1))
            got = got[:vocab]
        assert torch.equal(got, want), key
    if llm.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    record = json.loads((out / BUILD_RECORD).read_text())
    assert record["image_seq_length"] == model.config.image_seq_length and record["seed"] == 0


def test_plain_transformers_loads_it(sources, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "lvlm"
    build_lvlm(sources["qwen2"], sources["siglip"], out, projector="linear")
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    batch = processor(images=random_images(1), text=[text], return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    # "linear": the projector is the linear map of its first layer (identity activation, second layer the identity)
    projector = model.model.multi_modal_projector
    x = torch.randn(3, model.config.vision_config.hidden_size)
    torch.testing.assert_close(projector(x), projector.linear_1(x))


def test_an_llm_without_a_template_gets_llava_1_5s_format(sources, tmp_path, caplog):
    """Vicuna ships no chat template: the builder uses LLaVA-1.5's "USER: ... ASSISTANT:" format, and says so."""
    import shutil

    from tga_fast.models.build import LLAVA_1_5_TEMPLATE

    llm = shutil.copytree(sources["llama"], tmp_path / "vicuna-like")
    (llm / "chat_template.jinja").unlink()
    with caplog.at_level("WARNING", logger="tga_fast.models.build"):
        _, processor = build_lvlm(llm, sources["clip"])
    assert "ships no chat template" in caplog.text
    assert processor.chat_template == processor.tokenizer.chat_template == LLAVA_1_5_TEMPLATE
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text == "USER: Retrieved Text: a cat. <image>\nwhat is this? ASSISTANT:"


def test_same_seed_same_projector_and_the_global_rng_untouched(sources):
    def projector(seed):
        model, _ = build_lvlm(sources["llama"], sources["clip"], seed=seed)
        return torch.cat([p.flatten() for p in model.model.multi_modal_projector.parameters()])

    state = torch.random.get_rng_state()
    first = projector(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, projector(0)) and not torch.equal(first, projector(1))


def test_cli_and_its_errors(sources, tmp_path, capsys):
    from tga_fast.cli import main

    out = tmp_path / "lvlm"
    args = ["build-lvlm", "--llm", str(sources["mistral"]), "--vision", str(sources["clip"]), "--out", str(out)]
    assert main([*args, "--vision-layer", "-1", "--seed", "3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["vision_layer"] == -1 and record["seed"] == 3 and record["image_seq_length"] == PATCHES
    assert main(args) == 2 and "already holds files" in capsys.readouterr().err  # never replaced without --overwrite
    swapped = ["build-lvlm", "--llm", str(sources["clip"]), "--vision", str(sources["llama"]), "--out",
               str(tmp_path / "x")]
    assert main(swapped) == 2 and "supported LLMs" in capsys.readouterr().err
    with pytest.raises(UserError, match="anyres"):
        build_lvlm(sources["llama"], sources["clip"], image_tokens="full", anyres=True)
    with pytest.raises(UserError, match="vision_layer 5 is out of range"):
        build_lvlm(sources["llama"], sources["clip"], vision_layer=5)

"""Content order everywhere (METHOD.md 4): every supported family's student prompt has the retrieved text before the
image tokens, and the question after them; a template that puts the image first stops training with an error
that names the template and the fix."""

from __future__ import annotations

import pytest

from tests.training.make_data import write_llava_data
from tests.training.train_helpers import ROOT
from tga_fast.models import resolve
from tga_fast.models.build import LLAVA_1_5_TEMPLATE, build_lvlm
from tga_fast.models.tiny import random_images, save_tiny_base_llm, save_tiny_vision, tiny_vlm
from tga_fast.training.conversation import (
    ContentOrderError,
    Turn,
    check_content_order,
    encode_conversation,
    end_of_turn_ids,
    render_conversation,
    set_chat_template,
)

# llava-hf's habit, written for this test: every image item first, then the text items.
IMAGE_FIRST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IMAGE_LAST = (  # the text items first, then every image
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'image' %}\n<image>{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
FAMILIES = [
    ("llava", "llama"), ("llava", "mistral"), ("llava", "qwen2"), ("llava_next", "llama"), ("build_lvlm", "qwen2")
]


def _model(family: str, backbone: str, tmp_path):
    if family == "build_lvlm":  # a base LLM in its own chat format + CLIP, as the builder makes it
        llm = save_tiny_base_llm(tmp_path / "llm", backbone, layers=1)
        return build_lvlm(llm, save_tiny_vision(tmp_path / "clip", "clip"))
    return tiny_vlm(family, backbone, layers=1)


@pytest.mark.parametrize("family, backbone", FAMILIES, ids=lambda v: v)
def test_student_prompt_has_retrieved_text_then_image_then_question(family, backbone, tmp_path):
    model, processor = _model(family, backbone, tmp_path)
    check_content_order(processor)
    question, retrieved = "what is in this image?", "a red knife"
    rendered = render_conversation(processor, [Turn(question, "a cup.")], image=True, retrieved=retrieved)
    size = (40, 70) if family == "llava_next" else (40, 40)
    input_ids, _, spans, _, _ = encode_conversation(
        processor, rendered, random_images(1, size)[0], image_token_id=resolve(model).image_token_id,
        end_of_turn=end_of_turn_ids(processor),
    )  # fmt: skip
    (image_start, image_end), (retrieved_start, retrieved_end) = spans.tolist()
    assert retrieved_start < retrieved_end <= image_start < image_end  # the token spans, in order
    assert bool((input_ids[image_start:image_end] == resolve(model).image_token_id).all())
    tokenizer = processor.tokenizer
    assert tokenizer.decode(input_ids[retrieved_start:retrieved_end]).strip() == retrieved
    assert tokenizer.decode(input_ids[image_end:]).lstrip().startswith(question)


def test_image_first_template_is_an_error_naming_the_template_and_the_fix(tmp_path):
    _, processor = tiny_vlm("llava", "llama", layers=1)
    processor.chat_template = IMAGE_FIRST
    with pytest.raises(ContentOrderError, match=r"renders the image before the retrieved text.*--chat_template FILE"
                       r".*llava-1\.5-content-order\.jinja.*build-lvlm"):
        check_content_order(processor, source="/models/llava-1.5-7b-hf")
    with pytest.raises(ContentOrderError, match="of /models/llava-1.5-7b-hf"):
        check_content_order(processor, source="/models/llava-1.5-7b-hf")
    with pytest.raises(ContentOrderError):  # every sample, too
        render_conversation(processor, [Turn("q?", "a.")], image=True, retrieved="r")
    render_conversation(processor, [Turn("q?", "a.")], image=True, retrieved=None)  # nothing to misplace
    processor.chat_template = IMAGE_LAST
    with pytest.raises(ContentOrderError, match="renders the image after the question"):
        check_content_order(processor)
    # The fix: the shipped LLaVA-1.5 template with content order kept (the builder's fallback, the same text).
    shipped = ROOT / "configs" / "chat_templates" / "llava-1.5-content-order.jinja"
    assert shipped.read_text(encoding="utf-8") == LLAVA_1_5_TEMPLATE
    set_chat_template(processor, shipped)
    assert processor.tokenizer.chat_template == processor.chat_template == LLAVA_1_5_TEMPLATE
    text = check_content_order(processor)
    assert text.startswith("USER: Retrieved Text: a probe retrieved text. <image>\na probe question? ASSISTANT: ")


def test_training_stops_before_the_first_step(tmp_path):
    """``train`` checks the template once, after loading and before any data or step: a user error (exit code 2
    from the CLI), not a warning."""
    from tga_fast.training.train import main

    model, processor = tiny_vlm("llava", "llama", layers=1)
    processor.chat_template = IMAGE_FIRST
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    data = write_llava_data(tmp_path / "data", count=2, bad_records=False)
    args = ["--model_name_or_path", str(tmp_path / "model"), "--data_path", str(data), "--output_dir",
            str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", "--max_steps", "1"]
    with pytest.raises(ContentOrderError, match=f"of {tmp_path / 'model'}"):
        main(args)
    assert not (tmp_path / "out" / "log_history.json").exists()


@pytest.mark.slow
def test_build_lvlm_then_both_stages_through_the_cli(tmp_path):
    """The paper's path on tiny models: ``build-lvlm`` (a base LLM in Llama-3's chat format + CLIP), stage 1 and
    stage 2 with their presets; the trained model's template still keeps content order."""
    from tests.training.train_helpers import base_args, step_losses
    from tga_fast.cli import main as cli
    from tga_fast.models.loading import load_model

    llm = save_tiny_base_llm(tmp_path / "llm", "llama")
    clip = save_tiny_vision(tmp_path / "clip", "clip", whole_model=True)
    data = write_llava_data(tmp_path / "data", count=8, bad_records=False)
    assert cli(["build-lvlm", "--llm", str(llm), "--vision", str(clip), "--out", str(tmp_path / "lvlm")]) == 0
    common = dict(max_steps=2, target_layers=[1, 2], bf16="false", dataloader_num_workers=0)
    stage1 = base_args(tmp_path / "lvlm", data, tmp_path / "stage1", **common)
    assert cli(["train", str(ROOT / "configs" / "stage1_pretrain.json"), *stage1]) == 0
    stage2 = base_args(tmp_path / "lvlm", data, tmp_path / "stage2", **common,
                       projector_path=tmp_path / "stage1" / "projector.safetensors")
    assert cli(["train", str(ROOT / "configs" / "stage2_finetune.json"), *stage2]) == 0
    assert sorted(step_losses(tmp_path / "stage2", "pair")) == [1, 2]
    _, processor = load_model(tmp_path / "stage2", device="cpu")
    assert "Retrieved Text: a probe retrieved text. <image>\na probe question?" in check_content_order(processor)

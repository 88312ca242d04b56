"""A plain text LLM through ``train``: full fine-tuning and LoRA with a merged export, LM loss only, on text-only
records (text safety tuning of the LLM an LVLM is later built from), and the options it refuses.

The model is ``save_tiny_base_llm``'s Llama: Llama-3's chat format and, as Llama tokenizers ship, no pad token.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest
import torch

from tests.training.train_helpers import step_losses
from tga_fast.errors import UserError

ANSWER = "I'm sorry, I cannot help with that."
requires_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")


def _records(count: int) -> list[dict]:
    return [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"how do i use this {i}?"},
                                              {"from": "gpt", "value": ANSWER}]} for i in range(count)]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """``(LLM folder, data.jsonl)``: a random 2-layer LlamaForCausalLM with its tokenizer, 8 text-only records."""
    from tga_fast.models.tiny import save_tiny_base_llm

    root = tmp_path_factory.mktemp("text_llm")
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _records(8)) + "\n")
    return save_tiny_base_llm(root / "llm", "llama", layers=2), data


def _configs(llm, data, out, *, model=None, data_options=None, tga=None, train=None):
    """The four configs of a 2-step CPU run (batch 4), LM loss only."""
    from tga_fast.training.config import DataConfig, ModelConfig, TGAConfig, TrainConfig

    train_options = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                         logging_steps=1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                         seed=0)  # fmt: skip
    return (
        ModelConfig(model_name_or_path=str(llm), dtype="float32", **{"train_llm": True, **(model or {})}),
        DataConfig(data_path=str(data), **(data_options or {})),
        TGAConfig(**{"align": False, "target_layers": [1, 2], **(tga or {})}),
        TrainConfig(**{**train_options, **(train or {})}),
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    from tga_fast.models.loading import load_model

    model, _ = load_model(folder, device="cpu", dtype="float32")
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_labels_cover_only_the_answers_with_a_tokenizer_without_pad(text_files):
    """The LM loss masks the prompt: labels are the answer and its end-of-turn token; a batch pads with the EOS
    (the tokenizer has no pad token) under a zero attention mask and -100 labels."""
    from tga_fast.models.loading import load_model
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset

    _, tokenizer = load_model(text_files[0], device="cpu")
    assert tokenizer.pad_token is None
    dataset = TGADataset(text_files[1], tokenizer, progress=False)
    sample = dataset[0]
    answer = sample.labels != -100
    assert tokenizer.decode(sample.input_ids[answer]) == ANSWER + tokenizer.eos_token
    assert not answer[: int(answer.nonzero()[0])].any() and answer[int(answer.nonzero()[0]):].all()
    assert "how do i use this 0?" in tokenizer.decode(sample.input_ids[~answer])
    longer = dataclasses.replace(dataset.records[0], key="long", turns=dataset.records[0].turns * 2)
    batch = TGACollator(tokenizer)([sample, dataset.encode(longer)])
    padded = batch["attention_mask"][0] == 0
    assert padded.any() and not batch["attention_mask"][1].eq(0).any()
    assert (batch["labels"][0][padded] == -100).all()
    assert (batch["input_ids"][0][padded] == tokenizer.eos_token_id).all()


@pytest.mark.slow  # a full fine-tuning run (the fast loop keeps the LoRA ones, which share its code path)
def test_full_finetuning_trains_the_whole_llm(text_files, tmp_path):
    """``train_llm=True``: every weight trains, the finite LM loss is logged, the saved folder loads and differs
    from the base, no projector file is written (``export_projector`` keeps its default True), and text replay
    mixes in."""
    from tga_fast.training.train import train

    llm, data = text_files
    out = tmp_path / "full"
    metrics = train(*_configs(llm, data, out, data_options=dict(text_replay_path=str(data))))
    base, trained = _weights(llm), _weights(out)
    assert metrics["trainable"] == {"llm_trainable": sum(p.numel() for p in base.values())}
    assert metrics["projector"] is None and metrics["text_replay_samples"] == 8
    assert not (out / "projector.safetensors").exists()
    losses = step_losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    # Every decoder and head weight gets a gradient; the embedding only on the rows of tokens in the data.
    assert all(not torch.equal(trained[n], w) for n, w in base.items() if "embed_tokens" not in n)
    assert not torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


@requires_peft
def test_lora_merged_export_is_the_base_with_the_adapted_projections(text_files, tmp_path):
    """``lora_r`` + ``merge_lora``: only the adapters train; ``<out>/merged`` loads with ``load_model`` and
    transformers without peft, with the tokenizer and its chat template beside it, equals the base outside the
    adapted projections, computes what the trained adapter on the base computes, and generates."""
    from transformers import AutoModelForCausalLM

    from tga_fast.models.loading import load_model
    from tga_fast.training.lora import load_adapter
    from tga_fast.training.train import train

    llm, data = text_files
    out = tmp_path / "lora"
    model = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0)
    metrics = train(*_configs(llm, data, out, model=model, train=dict(merge_lora=True)))
    assert set(metrics["trainable"]) == {"llm_trainable", "llm_frozen"}
    assert metrics["merged"] == str(out / "merged") and metrics["projector"] is None
    assert (out / "adapter_model.safetensors").is_file() and not list(out.rglob("projector.safetensors"))

    base, merged = _weights(llm), _weights(out / "merged")
    assert sorted(base) == sorted(merged)
    adapted = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed == {n for n in base if n.rsplit(".", 2)[-2] in adapted}

    merged_model, tokenizer = load_model(out / "merged", device="cpu", dtype="float32")
    assert tokenizer.chat_template and AutoModelForCausalLM.from_pretrained(out / "merged") is not None
    assert not any(hasattr(m, "lora_A") for m in merged_model.modules())
    base_model, _ = load_model(llm, device="cpu", dtype="float32")
    adapter_model = load_adapter(base_model, out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "how do i use this?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(merged_model(**prompt).logits, adapter_model(**prompt).logits)
        generated = merged_model.generate(**prompt, max_new_tokens=3, do_sample=False,
                                          pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(tga=dict(align=True)), "TGAConfig.align"),
        (dict(model=dict(train_llm=False)), "ModelConfig.train_llm"),
    ],
    ids=["align", "nothing_trains"],
)
def test_text_llm_refuses_options_that_need_images_or_train_nothing(text_files, tmp_path, options, field):
    from tga_fast.training.train import train

    with pytest.raises(UserError, match=field):
        train(*_configs(*text_files, tmp_path / "out", **options))
    assert not (tmp_path / "out" / "log_history.json").exists()


def test_text_llm_refuses_image_records(text_files, tmp_path):
    from PIL import Image

    from tga_fast.training.train import train

    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    record = {"id": "img", "image": "cat.png", "caption": "a cat", "conversations": _records(1)[0]["conversations"]}
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [*_records(3), record]) + "\n")
    with pytest.raises(UserError, match="1 records have an image.*text-only LLM"):
        train(*_configs(text_files[0], data, tmp_path / "out"))


@requires_peft
def test_lora_checkpoint_without_projector_resumes(text_files, files, tmp_path):
    """A text LLM's LoRA checkpoint holds no projector file and is still complete: ``resume_from_checkpoint=last``
    continues from it. The same files with a LLaVA base (``files``) are incomplete: a VLM's adapter needs its
    projector."""
    import shutil

    from tga_fast.training.checkpoints import checkpoint_problems
    from tga_fast.training.train import train

    llm, data = text_files
    out = tmp_path / "lora"
    model = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0)
    train(*_configs(llm, data, out, model=model, train=dict(save_strategy="steps", save_steps=1)))
    assert checkpoint_problems(out / "checkpoint-2") == []
    vlm_checkpoint = shutil.copytree(out / "checkpoint-1", tmp_path / "vlm" / "checkpoint-1")
    adapter_config = json.loads((vlm_checkpoint / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(llm)
    adapter_config["base_model_name_or_path"] = str(files[0])
    (vlm_checkpoint / "adapter_config.json").write_text(json.dumps(adapter_config))
    assert checkpoint_problems(vlm_checkpoint) == ["projector.safetensors is missing"]
    metrics = train(*_configs(llm, data, out, model=model, train=dict(max_steps=3, resume_from_checkpoint="last")))
    assert metrics["resumed_from"] == str(out / "checkpoint-2") and sorted(step_losses(out)) == [1, 2, 3]

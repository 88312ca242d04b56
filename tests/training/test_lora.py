"""LoRA and QLoRA (peft): what trains, the gradient against full fine-tuning, export, resume, ZeRO-2.

The oracle for LoRA is full fine-tuning of the merged model: with W' = W + s * B A (s = alpha / r), the adapter's
gradients are the full model's gradient G = dL/dW' projected, dL/dB = s * G A^T and dL/dA = s * B^T G, and every
other trainable weight (the projector) gets the full model's gradient.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from tests.training.train_helpers import IMAGE_SAMPLES, assert_same_losses, base_args, step_losses
from tga_fast.models import resolve

pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")

LAYERS = [1, 2]


def _lora_config(**overrides):
    from tga_fast.training.config import ModelConfig

    options = dict(train_llm=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0)
    options.update(overrides)
    return ModelConfig(**options)


def _lora_layers(model):
    """``{name: module}`` of the peft LoRA layers (those with ``lora_A``)."""
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A")}


def _batch(files):
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset
    from tga_fast.training.stages import load_model
    from tga_fast.training.config import ModelConfig

    model, processor = load_model(ModelConfig(model_name_or_path=str(files[0]), dtype="float32"))
    dataset = TGADataset(files[1], processor, progress=False)
    return model, TGACollator(processor)([dataset[i] for i in IMAGE_SAMPLES])


def _trainer(model, tmp_path, **tga):
    from tga_fast.training.config import TGAConfig, TrainConfig
    from tga_fast.training.trainer import TGATrainer

    args = TrainConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return TGATrainer(model=model, args=args, tga=TGAConfig(target_layers=LAYERS, **tga), target_layers=LAYERS)


def test_default_targets_are_the_llms_projections_only():
    from tga_fast.models.tiny import tiny_vlm
    from tga_fast.training.lora import apply_lora
    from tga_fast.training.stages import freeze_for_stage

    model, _ = tiny_vlm("llava", "qwen2")
    parts = resolve(model)
    freeze_for_stage(model, train_llm=False)
    peft_model = apply_lora(model, _lora_config())
    adapted = _lora_layers(peft_model)
    in_llm = {id(m) for m in parts.decoder_layers.modules()}
    assert adapted and all(id(m) in in_llm for m in adapted.values())  # never the vision tower (CLIP has q_proj)
    names = {name.rsplit(".", 1)[-1] for name in adapted}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(adapted) == 7 * parts.num_layers
    # capture's paths resolve on the PeftModel to the same modules
    assert resolve(peft_model).decoder_layers is parts.decoder_layers
    assert resolve(peft_model).projector is parts.projector
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    projector = {f"base_model.model.{n}" for n, _ in model.named_parameters() if n.startswith("model.multi_modal_projector.")}
    assert projector <= trainable and all("lora_" in n for n in trainable - projector)


def test_lora_target_names_are_checked():
    from tga_fast.errors import UserError
    from tga_fast.models.tiny import tiny_vlm
    from tga_fast.training.lora import lora_target_regex

    model, _ = tiny_vlm("llava")
    assert "q_proj" in lora_target_regex(model, ["q_proj", "v_proj"])
    with pytest.raises(UserError, match="fc1"):
        lora_target_regex(model, ["q_proj", "fc1"])  # a vision-tower MLP name: not in the LLM


@pytest.mark.parametrize("lm_loss_weight", [1.0, 0.0])
def test_lora_gradient_is_full_finetuning_projected(files, tmp_path, lm_loss_weight):
    """LoRA's gradients (with non-reentrant gradient checkpointing, as stage 2 runs) equal the full fine-tuning
    gradient of the merged model (without), projected onto A and B; with ``lm_loss_weight=0`` the alignment terms
    alone reach the adapters below the last target layer."""
    from tga_fast.training.lora import apply_lora
    from tga_fast.training.stages import freeze_for_stage

    base, batch = _batch(files)
    freeze_for_stage(base, train_llm=False)
    lora = apply_lora(base, _lora_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B = 0 at init would leave dL/dA = 0: give B a value
        for module in _lora_layers(lora).values():
            module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=generator) * 0.1)
    full = copy.deepcopy(lora).merge_and_unload()
    freeze_for_stage(full, train_llm=True)
    lora.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for model in (lora, full):
        model.zero_grad()
        _trainer(model, tmp_path, lm_loss_weight=lm_loss_weight).compute_loss(model.train(), dict(batch)).backward()

    # the two models round differently (x A^T B^T vs x (W + s B A)^T): fp32 noise relative to each tensor's scale
    def assert_close(got, want):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * max(float(want.detach().abs().max()), 1e-12))

    grads = [torch.cat([p.grad.flatten() for p in resolve(m).projector.parameters()]) for m in (lora, full)]
    assert_close(*grads)
    reached = 0
    for name, module in _lora_layers(lora).items():
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        scale = module.scaling["default"]
        g = full.get_submodule(name.removeprefix("base_model.model.")).weight.grad
        assert module.base_layer.weight.grad is None  # the LLM's own weight is frozen
        assert_close(b.grad, scale * g @ a.T)
        assert_close(a.grad, scale * b.T @ g)
        reached += bool(b.grad.abs().sum() > 0)
    assert reached
    assert all(p.grad is None for p in resolve(lora).vision_tower.parameters())


def test_lora_steps_train_only_the_adapter_and_projector(files, tmp_path):
    """A few optimizer steps on one batch: the loss falls, the adapters and the projector move, every frozen
    weight (the LLM's own, the vision tower's) stays bit-identical."""
    from tga_fast.training.lora import apply_lora
    from tga_fast.training.stages import freeze_for_stage

    base, batch = _batch(files)
    freeze_for_stage(base, train_llm=False)
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = apply_lora(base, _lora_config())
    trainer = _trainer(model, tmp_path)
    trainable = [p for p in model.parameters() if p.requires_grad]
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = trainer.compute_loss(model.train(), dict(batch))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    for name, p in base.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]) != p.requires_grad, name  # frozen: identical; projector: moved
    moved = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, initial[name])]
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)


def test_export_adapter_loads_back_and_merges(files, tmp_path):
    """``tga-fast train`` with LoRA writes the adapter (peft loads it back, with the projector) and, with
    ``--merge_lora``, a plain model whose outputs equal the PeftModel's."""
    from peft import PeftModel

    from tga_fast.training.config import ModelConfig
    from tga_fast.training.lora import load_adapter
    from tga_fast.training.stages import load_model
    from tga_fast.training.train import main

    out = tmp_path / "out"
    metrics = main(base_args(*files, out, train_llm="true", lora_r=4, max_steps=2, target_layers=LAYERS,
                             merge_lora="true", learning_rate=1e-2))  # fmt: skip
    assert metrics["trainable"]["llm_trainable"] > 0 and metrics["merged"] == str(out / "merged")
    assert (out / "adapter_config.json").is_file() and (out / "projector.safetensors").is_file()
    base, batch = _batch(files)
    adapted = load_adapter(base, out)
    assert isinstance(adapted, PeftModel)
    assert any(m.lora_B["default"].weight.abs().sum() > 0 for m in _lora_layers(adapted).values())  # trained
    merged, _ = load_model(ModelConfig(model_name_or_path=str(out / "merged"), dtype="float32"))
    assert not _lora_layers(merged)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        want = adapted.eval()(**inputs).logits
        got = merged.eval()(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_4bit_without_lora_is_refused():
    from tga_fast.errors import UserError
    from tga_fast.training.config import ModelConfig

    with pytest.raises(UserError, match="lora_r"):
        ModelConfig(load_in_4bit=True)
    with pytest.raises(UserError, match="train_llm"):
        ModelConfig(lora_r=8)


@pytest.mark.slow  # two 4-step training runs and a resumed one
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_qlora_runs_and_resumes_to_the_same_state(files, tmp_path):
    """QLoRA (4-bit LLM) with gradient checkpointing: a run resumed from its step-2 checkpoint (the adapter and
    the projector beside it, optimizer, scheduler, data position) ends with the uninterrupted run's losses,
    adapter and projector."""
    from safetensors.torch import load_file

    from tga_fast.training.train import main

    options = dict(
        train_llm="true", lora_r=4, load_in_4bit="true", bnb_4bit_compute_dtype="float32", max_steps=4,
        per_device_train_batch_size=2, save_strategy="steps", save_steps=2, target_layers=LAYERS, learning_rate=3e-3,
        gradient_checkpointing="true",
    )  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main(base_args(*files, straight, **options))
    checkpoint = straight / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "projector.safetensors").is_file()
    main(base_args(*files, resumed, resume_from_checkpoint=str(checkpoint), **options))
    assert sorted(step_losses(straight)) == [1, 2, 3, 4]
    for step in (3, 4):
        assert step_losses(resumed)[step] == pytest.approx(step_losses(straight)[step], rel=1e-5)
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        got, want = load_file(str(resumed / name)), load_file(str(straight / name))
        assert sorted(got) == sorted(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # a one-process and a two-process DeepSpeed run
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_lora_zero2_two_processes_match_one(files, tmp_path):
    """ZeRO-2 with LoRA over 2 processes (batch 2 each) against one process (batch 4): the same logged losses and
    the same adapter and projector, within the error budgets of test_deepspeed.py."""
    from safetensors.torch import load_file

    from tests.training.test_deepspeed import ENTRY, launch
    from tests.training.train_helpers import ROOT, assert_within_adam_budget
    from tga_fast.training.train import main

    # no LoRA dropout: each process draws its own masks, so no two-process run could match one with it
    options = dict(train_llm="true", lora_r=4, lora_dropout=0.0, max_steps=3, target_layers=LAYERS, learning_rate=3e-3,
                   gradient_checkpointing="true")  # fmt: skip
    single, zero2 = tmp_path / "single", tmp_path / "zero2"
    main(base_args(*files, single, per_device_train_batch_size=4, **options))
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    deepspeed = str(ROOT / "configs" / "deepspeed" / "zero2.json")
    launch(entry, base_args(*files, zero2, per_device_train_batch_size=2, deepspeed=deepspeed, **options))
    assert_same_losses(step_losses(zero2), step_losses(single), [1, 2, 3])
    for key in ("pair", "hinge", "cos/layer_2"):
        assert_same_losses(step_losses(zero2, key), step_losses(single, key), sorted(step_losses(single, key)))
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        assert_within_adam_budget(load_file(str(zero2 / name)), load_file(str(single / name)),
                                  lr=options["learning_rate"], steps=options["max_steps"])  # fmt: skip


@pytest.mark.slow  # build-lvlm and two training runs through the CLI
def test_build_lvlm_stage1_then_stage2_with_lora_through_the_cli(tmp_path):
    """The paper's starting point with the LoRA recipe: ``build-lvlm`` (a base LLM + CLIP), stage 1 with its preset,
    stage 2 with its preset plus ``--lora_r`` and ``--merge_lora``; the merged model loads without peft, its
    template still keeps content order, and ``eval dsr`` and every analysis run on it through the CLI (issue 14's
    end-to-end target)."""
    from tests.training.make_data import write_llava_data
    from tests.training.train_helpers import ROOT
    from tga_fast.cli import main as cli
    from tga_fast.models.loading import load_model
    from tga_fast.models.tiny import save_tiny_base_llm, save_tiny_vision
    from tga_fast.training.conversation import check_content_order

    llm = save_tiny_base_llm(tmp_path / "llm", "llama")
    clip = save_tiny_vision(tmp_path / "clip", "clip", whole_model=True)
    data = write_llava_data(tmp_path / "data", count=8, bad_records=False)
    assert cli(["build-lvlm", "--llm", str(llm), "--vision", str(clip), "--out", str(tmp_path / "lvlm")]) == 0
    common = dict(max_steps=2, target_layers=LAYERS, bf16="false", dataloader_num_workers=0)
    stage1 = base_args(tmp_path / "lvlm", data, tmp_path / "stage1", **common)
    assert cli(["train", str(ROOT / "configs" / "stage1_pretrain.json"), *stage1]) == 0
    stage2 = base_args(tmp_path / "lvlm", data, tmp_path / "stage2", **common, lora_r=4, learning_rate=1e-3,
                       merge_lora="true", projector_path=tmp_path / "stage1" / "projector.safetensors")  # fmt: skip
    assert cli(["train", str(ROOT / "configs" / "stage2_finetune.json"), *stage2]) == 0
    assert sorted(step_losses(tmp_path / "stage2", "pair")) == [1, 2]
    assert (tmp_path / "stage2" / "adapter_model.safetensors").is_file()
    merged, processor = load_model(tmp_path / "stage2" / "merged", device="cpu")
    assert not _lora_layers(merged)
    assert "Retrieved Text: a probe retrieved text. <image>\na probe question?" in check_content_order(processor)
    # The trained model through evaluation and every analysis, by the CLI, on a small evaluation set with images
    # (toxic and benign samples, retrieved texts); the DSR prompts keep the retrieved text before the image.
    from tests.evaluation.conftest import write_eval_set
    from tga_fast.analysis import ANALYSES
    from tga_fast.evaluation.dsr import DSRResult

    eval_file = write_eval_set(tmp_path / "eval")
    model = str(tmp_path / "stage2" / "merged")
    assert cli(["eval", "dsr", "--model", model, "--data", str(eval_file), "--out", str(tmp_path / "dsr"),
                "--with-retrieved", "--max-new-tokens", "3", "--no-progress"]) == 0
    dsr = DSRResult.load(tmp_path / "dsr")
    knife = next(r.prompt for r in dsr.records if r.id == "knife")
    assert knife.index("Retrieved Text: a knife. ") < knife.index("<image>") < knife.index("how do i use this?")
    small = {"knockout_sweep": ["--window", "2", "--max-new-tokens", "2"],
             "steering_sweep": ["--window", "2", "--max-new-tokens", "2"],
             "safety_layers": ["--max-new-tokens", "2"]}
    for name in ANALYSES:
        out = tmp_path / "analysis" / name
        assert cli(["analyze", name, "--model", model, "--data", str(eval_file), "--out", str(out), "--no-progress",
                    *small.get(name, [])]) == 0, name
        assert (out / "result.json").is_file() and (out / "figure.png").is_file()

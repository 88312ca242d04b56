"""bitsandbytes paths: the 8-bit AdamW (``--optim adamw_bnb_8bit``) and a 4-bit LLM trained through LoRA adapters
(QLoRA) under a trained projector. More of QLoRA (resume) in test_lora.py."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.training.train_helpers import base_args, step_losses
from tga_fast.models import resolve

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
# A 4-bit LLM trains through LoRA adapters (transformers' Trainer takes a quantised model only with them).
QLORA = dict(load_in_4bit=True, bnb_4bit_compute_dtype="float32", train_llm=True, lora_r=4, lora_dropout=0.0)


def test_adamw_8bit_optimizer_steps(files, tmp_path):
    from tga_fast.training.train import main

    out = tmp_path / "out"
    metrics = main(base_args(*files, out, optim="adamw_bnb_8bit", max_steps=2, target_layers=[1, 2], train_llm="true"))
    losses = step_losses(out)
    assert sorted(losses) == [1, 2] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert metrics["trainable"]["llm_trainable"] > 0


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_4bit_llm_trains_the_adapters_and_projector(files, tmp_path):
    from safetensors.torch import load_file

    from tga_fast.training.config import ModelConfig
    from tga_fast.training.stages import load_model
    from tga_fast.training.train import main

    model_path, _ = files
    config = ModelConfig(model_name_or_path=str(model_path), **QLORA)
    try:
        quantized, _ = load_model(config)
    except Exception as error:  # bitsandbytes without a CPU 4-bit backend here
        pytest.skip(f"bitsandbytes 4-bit on this CPU: {error}")
    parts = resolve(quantized)
    kinds = {type(m).__name__ for m in parts.decoder_layers.modules()}
    assert "Linear4bit" in kinds  # the LLM is quantised ...
    for part in (parts.vision_tower, parts.projector, parts.lm_head):  # ... the rest is not
        assert not any(type(m).__name__ == "Linear4bit" for m in part.modules())

    out = tmp_path / "out"
    before = {k: v.clone() for k, v in resolve(quantized).projector.state_dict().items()}
    metrics = main(base_args(
        *files, out, **{k: str(v).lower() for k, v in QLORA.items()}, max_steps=2, target_layers=[1, 2],
        save_full_model="false",
    ))  # fmt: skip
    assert metrics["trainable"]["projector_trainable"] > 0 and metrics["trainable"]["llm_trainable"] > 0
    assert sorted(step_losses(out)) == [1, 2]
    exported = load_file(str(out / "projector.safetensors"))
    changed = [k for k, v in before.items() if not torch.equal(exported[f"model.multi_modal_projector.{k}"], v)]
    assert changed, "the projector did not train"


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_4bit_projector_gradient_matches_the_dequantized_model(files, tmp_path):
    """The oracle: the same model with the 4-bit weights dequantized to fp32, both with the same LoRA adapters
    (zero B at init: the function is the base model's). The teacher pass (eval, no grad) runs first, as in
    training, so a layer that switched to a kernel without backward would show here."""
    from bitsandbytes.functional import dequantize_4bit

    from tga_fast.training.collator import TGACollator
    from tga_fast.training.config import ModelConfig, TGAConfig, TrainConfig
    from tga_fast.training.data import TGADataset
    from tga_fast.training.lora import apply_lora
    from tga_fast.training.stages import freeze_for_stage, load_model
    from tga_fast.training.trainer import TGATrainer

    model_path, data_path = files
    try:
        quantized, processor = load_model(
            ModelConfig(model_name_or_path=str(model_path), **QLORA)
        )
    except Exception as error:
        pytest.skip(f"bitsandbytes 4-bit on this CPU: {error}")
    reference, _ = load_model(ModelConfig(model_name_or_path=str(model_path), dtype="float32"))
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if type(module).__name__ == "Linear4bit":
                weight = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
                reference.get_submodule(name).weight.copy_(weight.view_as(reference.get_submodule(name).weight))
    dataset = TGADataset(data_path, processor, progress=False)
    batch = TGACollator(processor)([dataset[i] for i in (0, 1, 2, 5)])
    # as a model loaded by other means than load_model: the trainer itself keeps the layers differentiable
    layers4 = [m for m in quantized.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers4
    for module in layers4:
        module.support_avx512bf16_for_cpu = True
    grads = []
    for model in (quantized, reference):
        freeze_for_stage(model, train_llm=False)
        torch.manual_seed(0)  # the same adapter initialisation for both
        model = apply_lora(model, ModelConfig(**{k: v for k, v in QLORA.items() if not k.startswith(("load", "bnb"))}))
        args = TrainConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        trainer = TGATrainer(model=model, args=args, tga=TGAConfig(target_layers=[1, 2]), target_layers=[1, 2])
        assert not any(m.support_avx512bf16_for_cpu for m in layers4)
        for _ in range(2):  # the second step runs after a teacher pass has already run on every layer
            model.zero_grad()
            trainer.compute_loss(model.train(), dict(batch)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in resolve(model).projector.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_4bit_checkpoint_reloads(files, tmp_path):
    """A checkpoint of a 4-bit run (quantisation state saved next to each 4-bit weight) reloads through the
    resume path: the projector comes back, the frozen 4-bit LLM is unchanged, nothing is reported missing."""
    from tga_fast.training.checkpoints import load_renamed_checkpoint
    from tga_fast.training.config import ModelConfig
    from tga_fast.training.stages import load_model

    config = ModelConfig(model_name_or_path=str(files[0]), **QLORA)
    try:
        trained, _ = load_model(config)
    except Exception as error:
        pytest.skip(f"bitsandbytes 4-bit on this CPU: {error}")
    with torch.no_grad():
        for p in resolve(trained).projector.parameters():
            p.add_(1.0)
    trained.save_pretrained(tmp_path / "checkpoint")
    model, _ = load_model(config)
    assert load_renamed_checkpoint(model, tmp_path / "checkpoint")
    want = trained.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, want[name]), name

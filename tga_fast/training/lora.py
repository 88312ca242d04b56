"""LoRA and QLoRA through peft: the LLM trains through low-rank adapters, the projector in full, the vision tower
never.

The adapters go on the LLM's attention and MLP projections (the text family's ``lora_targets`` in
``tga_fast/models/adapters.py``), matched only inside its decoder blocks, so the vision tower (whose attention
layers have the same names in CLIP) and the projector are never adapted. The projector stays a plain module that
trains in full, as in LLaVA's own LoRA recipe; it is saved next to the adapter as ``projector.safetensors``, since
peft's adapter files hold only the adapter. A plain text LLM (no projector: text safety tuning before an LVLM
is built from it) gets the same adapters and no projector file. With a 4-bit LLM (QLoRA) peft's
``prepare_model_for_kbit_training`` readies the model; transformers' Trainer accepts a quantised model only with
such adapters.

    model = apply_lora(model, model_config)                      # after freeze_for_stage(model, train_llm=False)
    save_adapter(model, "out/adapter")                            # adapter_config.json, adapter_model.safetensors,
                                                                  # projector.safetensors
    model = load_adapter(base_model, "out/adapter")               # a PeftModel with the trained projector
    export_merged("models/llava", "out/adapter", "out/merged")    # a plain HF folder, adapter merged in
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from torch import nn

from tga_fast.errors import UserError
from tga_fast.models import resolve
from tga_fast.models.adapters import ARCHITECTURES

__all__ = ["PROJECTOR_FILE", "apply_lora", "has_projector", "is_peft_model", "lora_target_regex", "load_adapter",
           "save_adapter"]

logger = logging.getLogger(__name__)
PROJECTOR_FILE = "projector.safetensors"


def is_peft_model(model: nn.Module) -> bool:
    """True for a peft ``PeftModel`` (without importing peft when it is not installed)."""
    return any(cls.__name__ == "PeftModel" and cls.__module__.startswith("peft") for cls in type(model).__mro__)


def has_projector(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside a DeepSpeed/DDP wrapper) has a projector to save beside its adapter:
    False for a text LLM."""
    return resolve(getattr(model, "module", model)).projector is not None


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def lora_target_regex(model: nn.Module, targets: list[str] | None = None) -> str:
    """peft's ``target_modules`` as one regular expression (peft full-matches it against module names): the
    ``targets`` (default: the text family's projections) at any depth inside the LLM's decoder blocks.

    Raises ``UserError`` naming the targets that match no linear layer there, and when the family has no default.
    """
    parts = resolve(model)
    if targets is None:
        text_type = getattr(getattr(model.config, "text_config", None), "model_type", None) or parts.model_type
        # A VLM whose text backbone is no family of its own here (Qwen2-VL's "qwen2_vl_text", Gemma 3's
        # "gemma3_text") names its targets in its own entry.
        owner = text_type if text_type in ARCHITECTURES else parts.model_type
        targets = list(ARCHITECTURES[owner].lora_targets)
        if not targets:
            raise UserError(f"ModelConfig.lora_target: no default LoRA targets for {text_type!r}: name them")
    found = {name.rsplit(".", 1)[-1] for name, module in parts.decoder_layers.named_modules() if _is_linear(module)}
    unknown = sorted(set(targets) - found)
    if unknown:
        raise UserError(f"ModelConfig.lora_target: {unknown} name no linear layer of the decoder blocks (they have "
                        f"{sorted(found)})")
    base = model.get_base_model() if is_peft_model(model) else model
    layers = _module_name(base, parts.decoder_layers)
    names = "|".join(re.escape(name) for name in sorted(set(targets)))
    return rf"{re.escape(layers)}\.\d+\.(?:.+\.)?(?:{names})"


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear
    return isinstance(module, nn.Linear)


def apply_lora(model: nn.Module, config) -> nn.Module:
    """Wraps ``model`` in a peft ``PeftModel`` with LoRA adapters per ``config`` (a ``ModelConfig``: ``lora_r``,
    ``lora_alpha`` (default 2r), ``lora_dropout``, ``lora_target``) and keeps the projector trainable (a text LLM
    has none: only the adapters train).

    Call after ``freeze_for_stage(model, train_llm=False)``: only the adapters and the projector train. A 4-bit
    model goes through ``prepare_model_for_kbit_training`` first (it casts the unquantised weights to fp32, so
    the projector trains in fp32). Gradient checkpointing is left to the Trainer (non-reentrant, see
    ``TrainConfig``: the projector's output already carries grad into the LLM, so no input hook is needed).
    """
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise UserError("ModelConfig.lora_r: LoRA needs peft (pip install 'tga_fast[train]')") from None

    target = lora_target_regex(model, config.lora_target)
    projector = resolve(model).projector
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=target,
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    if projector is not None:  # peft freezes every non-adapter weight: the projector trains in full (METHOD.md 4)
        projector.requires_grad_(True)
    return peft_model


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Writes the adapter (peft's ``save_pretrained``: ``adapter_config.json``, ``adapter_model.safetensors``) and,
    for a VLM, ``projector.safetensors`` to ``folder``; returns it. Call on one process (ZeRO-2 and DDP hold full
    weights)."""
    from tga_fast.training.export import export_projector

    folder = Path(folder)
    model = getattr(model, "module", model)
    if not is_peft_model(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapter (apply_lora first)")
    model.save_pretrained(str(folder))
    if has_projector(model):
        export_projector(model, folder / PROJECTOR_FILE)
    return folder


def load_adapter(model: nn.Module, folder: str | Path, *, is_trainable: bool = False) -> nn.Module:
    """A ``PeftModel`` of ``model`` (the base LLaVA, or a text LLM) with the adapter of ``folder`` and, for a VLM,
    its trained projector."""
    from peft import PeftModel

    from tga_fast.training.export import load_projector

    folder = Path(folder)
    if has_projector(model):
        if not (folder / PROJECTOR_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {PROJECTOR_FILE}: not a tga_fast LoRA adapter folder")
        load_projector(model, folder / PROJECTOR_FILE)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)

"""Loading a LLaVA-style model for a training stage and choosing what trains (METHOD.md section 4).

Stage 1 (pretraining): the projector only. Stage 2 (fine-tuning): the projector and the LLM, or the projector
only. The vision tower is frozen in every stage. A projector-only run may hold the LLM in 4 bits
(bitsandbytes), with the vision tower, the projector and the lm_head kept unquantised.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from tga_fast.models import resolve
from tga_fast.models.adapters import ARCHITECTURES
from tga_fast.training.config import ModelConfig

__all__ = ["freeze_for_stage", "keep_4bit_layers_differentiable", "load_model", "parameter_counts"]

logger = logging.getLogger(__name__)


def _dtype(name: str):
    return name if name == "auto" else getattr(torch, name)


def load_model(config: ModelConfig):
    """``(model, processor)`` from a local HF folder (``save_pretrained`` layout), nothing downloaded.

    Under DeepSpeed ZeRO-3 create the ``TrainingArguments`` first: transformers then loads the weights already
    partitioned (``zero.Init``).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = config.require_model()
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    if hf_config.model_type not in ARCHITECTURES:
        raise ValueError(
            f"ModelConfig.model_name_or_path: model type {hf_config.model_type!r} is not supported; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    kwargs = dict(
        dtype=_dtype(config.dtype),
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        arch = ARCHITECTURES[hf_config.model_type]
        # Full module paths: transformers matches these from the start of a module's name (or as its suffix).
        keep = sorted(set(arch.vision_tower + arch.projector + arch.lm_head))
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, config.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
            llm_int8_skip_modules=keep,
        )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if torch.cuda.is_available() else "cpu"
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if config.load_in_4bit:
        keep_4bit_layers_differentiable(model)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    return model, processor


def keep_4bit_layers_differentiable(model: nn.Module) -> int:
    """Keeps every bitsandbytes ``Linear4bit`` in its differentiable weight layout; returns how many it touched.

    Workaround (2026-11, bitsandbytes 0.50.2, CPU only): ``Linear4bit.forward`` repacks its weight for an
    AVX512-BF16 kernel the first time it runs in eval mode on an input without grad (the teacher pass), and from
    then on always takes that kernel, which has no backward: every later student pass would silently drop the
    frozen LLM's Jacobian from the projector's gradient. The layer's own switch (``support_avx512bf16_for_cpu``,
    set in its ``__init__``) turns the repacking off. GPU layers never repack; a no-op without bitsandbytes.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def freeze_for_stage(model: nn.Module, train_llm: bool) -> dict[str, int]:
    """Sets ``requires_grad``: the projector trains, the LLM trains only with ``train_llm``, the vision tower never.

    Returns the trainable and frozen parameter counts per part (``parameter_counts``).
    """
    parts = resolve(model)
    if parts.projector is None or parts.vision_tower is None:
        raise ValueError(f"{parts.model_type} has no vision tower/projector: TGA trains vision-language models")
    model.requires_grad_(False)
    if train_llm:
        quantized = [n for n, p in model.named_parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
        if quantized:
            raise ValueError(f"ModelConfig.train_llm: the LLM is quantised ({quantized[0]}, ...) and cannot train")
        model.requires_grad_(True)
        parts.vision_tower.requires_grad_(False)
    parts.projector.requires_grad_(True)
    counts = parameter_counts(model)
    logger.info("trainable parameters: %s", counts)
    return counts


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"<part>_trainable": n, "<part>_frozen": n}`` for vision_tower, projector and llm (the rest)."""
    parts = resolve(model)
    owner = {}
    for part, module in (("vision_tower", parts.vision_tower), ("projector", parts.projector)):
        for p in module.parameters():
            owner[id(p)] = part
    counts: dict[str, int] = {}
    for p in model.parameters():
        part = owner.get(id(p), "llm")
        numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions: the full size
        key = f"{part}_{'trainable' if p.requires_grad else 'frozen'}"
        counts[key] = counts.get(key, 0) + numel
    return counts

"""Loading a LLaVA-style model for a training stage and choosing what trains (METHOD.md section 4).

Stage 1 (pretraining): the projector only. Stage 2 (fine-tuning): the projector and the LLM, or the projector
only. The vision tower is frozen in every stage. A projector-only run may hold the LLM in 4 bits
(bitsandbytes), with the vision tower, the projector and the lm_head kept unquantised.

A plain text LLM (a ``*ForCausalLM``: no vision tower, no projector, :func:`is_text_llm`) trains whole, or
through LoRA adapters: text safety tuning of the LLM an LVLM is later built from.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from tga_fast.models import resolve
from tga_fast.errors import UserError
from tga_fast.training.config import ModelConfig

__all__ = ["freeze_for_stage", "is_text_llm", "keep_4bit_layers_differentiable", "load_model", "parameter_counts"]

logger = logging.getLogger(__name__)


def load_model(config: ModelConfig):
    """``(model, processor)`` for a training stage, through tga_fast's one loader
    (:func:`tga_fast.models.loading.load_model`: a local folder, or an explicit ``hub:<org>/<name>``; remote code
    only with ``--trust_remote_code true``). The model stays where ``from_pretrained`` put it (the Trainer places
    it); a 4-bit LLM goes to this process's GPU (``LOCAL_RANK``), or the CPU without one.

    Under DeepSpeed ZeRO-3 create the ``TrainingArguments`` first: transformers then loads the weights already
    partitioned (``zero.Init``).

    Raises:
        UserError: naming ``ModelConfig.model_name_or_path`` when the folder does not exist or is not a checkpoint.
    """
    from tga_fast.models.loading import load_model as load

    path = config.require_model()
    device = "cpu"
    if config.load_in_4bit and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    options = None
    if config.load_in_4bit:
        options = dict(
            bnb_4bit_quant_type=config.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, config.bnb_4bit_compute_dtype),
            bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        )
    try:
        model, processor = load(
            path, device=device, dtype=config.dtype, quantization="4bit" if config.load_in_4bit else None,
            attn_implementation=config.attn_implementation, quantization_options=options,
            trust_remote_code=config.trust_remote_code, place=False,
        )  # fmt: skip
    except FileNotFoundError as error:
        raise UserError(f"ModelConfig.model_name_or_path: {error}") from None
    if config.load_in_4bit:
        keep_4bit_layers_differentiable(model)
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


def is_text_llm(model: nn.Module) -> bool:
    """True for a plain text LLM (its family has neither a vision tower nor a projector), which trains with the LM
    loss alone; False for a vision-language model."""
    parts = resolve(model)
    return parts.vision_tower is None and parts.projector is None


def freeze_for_stage(model: nn.Module, train_llm: bool) -> dict[str, int]:
    """Sets ``requires_grad``: the projector trains, the LLM trains only with ``train_llm``, the vision tower never.
    A text LLM (:func:`is_text_llm`) is all LLM: everything trains with ``train_llm``, nothing without (the
    state LoRA starts from).

    Returns the trainable and frozen parameter counts per part (``parameter_counts``).
    """
    parts = resolve(model)
    if (parts.projector is None) != (parts.vision_tower is None):
        raise ValueError(f"{parts.model_type} has a vision tower or a projector, not both: not a LLaVA-style model")
    model.requires_grad_(False)
    if train_llm:
        quantized = [n for n, p in model.named_parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
        if quantized:
            raise ValueError(f"ModelConfig.train_llm: the LLM is quantised ({quantized[0]}, ...) and cannot train")
        model.requires_grad_(True)
        if parts.vision_tower is not None:
            parts.vision_tower.requires_grad_(False)
    if parts.projector is not None:
        parts.projector.requires_grad_(True)
    counts = parameter_counts(model)
    logger.info("trainable parameters: %s", counts)
    return counts


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"<part>_trainable": n, "<part>_frozen": n}`` for vision_tower, projector and llm (the rest; a text LLM
    has only llm)."""
    parts = resolve(model)
    owner = {}
    for part, module in (("vision_tower", parts.vision_tower), ("projector", parts.projector)):
        for p in module.parameters() if module is not None else ():
            owner[id(p)] = part
    counts: dict[str, int] = {}
    for p in model.parameters():
        part = owner.get(id(p), "llm")
        numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions: the full size
        key = f"{part}_{'trainable' if p.requires_grad else 'frozen'}"
        counts[key] = counts.get(key, 0) + numel
    return counts

"""Loading a supported HF checkpoint from a local folder, optionally quantised with bitsandbytes.

    model, processor = load_model("checkpoints/llava-1.5-7b-hf", dtype="float16", quantization="4bit")

LLaVA-style families come with their ``AutoProcessor`` (images), text LLMs with their ``AutoTokenizer``. Remote
code is never trusted: a family must be one of :func:`tga_fast.models.supported_model_types`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tga_fast.models.adapters import ARCHITECTURES, supported_model_types

__all__ = ["QUANTIZATIONS", "load_model", "parse_dtype", "default_device"]

QUANTIZATIONS = (None, "4bit", "8bit")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_dtype(dtype, device: str) -> torch.dtype:
    """A torch dtype from a dtype or its name; None gives bfloat16 (float16 without bf16 support) on a GPU and
    float32 on the CPU."""
    if dtype is None:
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))}, got {dtype!r}")
    return _DTYPES[dtype]


def _check_family(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported model family {model_type!r}; supported: {supported_model_types()}")
    backbones = ARCHITECTURES[model_type].text_backbones
    if backbones:
        backbone = getattr(getattr(config, "text_config", None), "model_type", None)
        if backbone not in backbones:
            raise ValueError(f"{model_type} with text backbone {backbone!r} is not supported; supported backbones: "
                             f"{list(backbones)}")
    return model_type


def _quantization_config(quantization: str, model_type: str, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    arch = ARCHITECTURES[model_type]
    # The vision tower, the projector and the LM head stay in full precision: quantising them costs accuracy and
    # saves little memory (QLoRA and LLaVA's own 4-bit loader do the same).
    skip = sorted({*arch.vision_tower, *arch.projector, *arch.lm_head})
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_model(path, *, device: str | None = None, dtype=None, quantization: str | None = None,
               attn_implementation: str = "sdpa"):
    """``(model, processor_or_tokenizer)`` from a local HF folder, the model in eval mode on ``device``.

    Args:
        path: a local checkpoint folder (``config.json`` plus weights, processor / tokenizer files).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: a GPU when present).
        dtype: a torch dtype or ``"float32"``/``"float16"``/``"bfloat16"`` (default: see :func:`parse_dtype`); the
            compute dtype of quantised layers.
        quantization: None, ``"4bit"`` (NF4, double quantisation) or ``"8bit"`` (LLM.int8) via bitsandbytes.
        attn_implementation: transformers' attention (``"sdpa"``, ``"eager"``...).

    Raises:
        FileNotFoundError: ``path`` is not a folder with a ``config.json``.
        ValueError: the family is not supported (the message lists the supported ones), a CUDA device without a
            GPU, or a bad option.
    """
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model path {folder} does not exist (a local HF checkpoint folder is expected)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model path {folder} has no config.json (a local HF checkpoint folder is expected)")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but this torch sees no CUDA GPU (use --device cpu)")
    torch_dtype = parse_dtype(dtype, device)
    config = AutoConfig.from_pretrained(folder)
    model_type = _check_family(config)
    multimodal = bool(ARCHITECTURES[model_type].vision_tower)

    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation)
    if quantization is not None:
        kwargs["quantization_config"] = _quantization_config(quantization, model_type, torch_dtype)
        kwargs["device_map"] = {"": device}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires torchvision.*")
        if multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
            processor = AutoProcessor.from_pretrained(folder)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            processor = AutoTokenizer.from_pretrained(folder)
    if quantization is None:
        model = model.to(device)
    return model.eval(), processor

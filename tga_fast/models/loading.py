"""The one model loader of tga_fast: a supported HF checkpoint from a local folder (or, asked for explicitly, from
the Hub), optionally quantised with bitsandbytes.

    model, processor = load_model("checkpoints/llava-1.5-7b-hf", dtype="float16", quantization="4bit")
    model, processor = load_model("hub:llava-hf/llava-1.5-7b-hf")        # the Hub, only when asked and reachable

Rules (the same for evaluation, analysis and training):

- a path is a local folder; a missing one is a ``FileNotFoundError`` saying so (never a Hub lookup that fails with
  "Repo id ...");
- the Hub is reached only for an explicit ``hub:<org>/<name>`` and only when ``HF_HUB_OFFLINE`` is not set;
- remote code is never trusted unless ``trust_remote_code=True`` (the user's own flag), and the family must be
  one of :func:`tga_fast.models.supported_model_types` either way.

LLaVA-style families come with their ``AutoProcessor`` (images), text LLMs with their ``AutoTokenizer``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from tga_fast.errors import UserError
from tga_fast.models.adapters import ARCHITECTURES, supported_model_types

__all__ = ["HUB_PREFIX", "QUANTIZATIONS", "default_device", "load_model", "parse_dtype", "resolve_model_source"]

HUB_PREFIX = "hub:"
QUANTIZATIONS = (None, "4bit", "8bit")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = ("1", "true", "yes", "on")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_dtype(dtype, device: str) -> torch.dtype | str:
    """A torch dtype from a dtype or its name; None gives bfloat16 (float16 without bf16 support) on a GPU and
    float32 on the CPU; ``"auto"`` is passed through (the checkpoint's own dtype)."""
    if dtype is None:
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(set(_DTYPES))}, got {dtype!r}")
    return _DTYPES[dtype]


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_source(path) -> tuple[str, bool]:
    """``(what from_pretrained gets, from_hub)`` for a model argument.

    ``hub:<org>/<name>`` is a Hub id (a :class:`UserError` when malformed or when ``HF_HUB_OFFLINE`` /
    ``TRANSFORMERS_OFFLINE`` is set); anything else is a local folder that must exist with a ``config.json``.

    Raises:
        FileNotFoundError: the local folder does not exist or has no ``config.json`` (the message says that a Hub id
            needs the ``hub:`` prefix when the argument looks like one).
    """
    text = os.fspath(path)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not _REPO_ID.match(repo):
            raise UserError(f"model {text!r}: a Hub id is hub:<org>/<name>, got {repo!r}")
        if _hub_offline():
            raise UserError(f"model {text!r} is on the Hub but HF_HUB_OFFLINE is set: download it to a folder and "
                            "pass the folder, or unset HF_HUB_OFFLINE")
        return repo, True
    folder = Path(text)
    hint = (f" (for the Hub model {text!r}, write hub:{text})" if _REPO_ID.match(text) and not folder.exists()
            else "")
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (a local HF checkpoint folder is expected){hint}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model path {folder} has no config.json (a local HF checkpoint folder is expected)")
    return str(folder), False


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


def _check_processor(processor, model_type: str, source: str) -> None:
    """Raises when ``AutoProcessor`` gave a multimodal family a bare tokenizer.

    transformers falls back to the tokenizer, without a word, when the folder's processor class cannot be built
    (transformers 5.24: ``PixtralProcessor``, Mistral 3's, imports torchvision); image prompts would then fail far
    from the cause. (Qwen2-VL's processor, which needs torchvision only for videos, gets a stand-in first:
    :func:`_load_processor`.)"""
    from tga_fast.models.processors import is_processor

    if is_processor(processor):
        return
    import importlib.util

    hint = "" if importlib.util.find_spec("torchvision") else (
        "; torchvision is not installed and some processors need it (Mistral 3's PixtralProcessor): pip install "
        "torchvision"
    )
    raise UserError(f"{model_type} model {source}: AutoProcessor gave a {type(processor).__name__}, not an image "
                    f"processor with a tokenizer{hint}")


def _quantization_config(quantization: str, model_type: str, compute_dtype, options: dict | None):
    from transformers import BitsAndBytesConfig

    arch = ARCHITECTURES[model_type]
    # The vision tower, the projector and the LM head stay in full precision: quantising them costs accuracy and
    # saves little memory (QLoRA and LLaVA's own 4-bit loader do the same). Full module paths: transformers
    # matches these from the start of a module's name (or as its suffix).
    skip = sorted({*arch.vision_tower, *arch.projector, *arch.lm_head})
    if quantization == "4bit":
        settings = dict(bnb_4bit_compute_dtype=compute_dtype if isinstance(compute_dtype, torch.dtype) else torch.float32,
                        bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        settings.update(options or {})
        if isinstance(settings["bnb_4bit_compute_dtype"], str):
            settings["bnb_4bit_compute_dtype"] = parse_dtype(settings["bnb_4bit_compute_dtype"], "cpu")
        return BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=skip, **settings)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip, **(options or {}))


# Families whose transformers processor needs torchvision only for videos (transformers 5.24), with tga_fast's
# image-only stand-in: "<module>:<class>", imported on demand.
_IMAGE_ONLY_PROCESSORS = {
    "qwen2_vl": "tga_fast.models.qwen_vl_processor:ImageOnlyQwenVLProcessor",
    "qwen2_5_vl": "tga_fast.models.qwen_vl_processor:ImageOnlyQwenVLProcessor",
}


def _load_processor(auto_processor, source: str, model_type: str, common: dict):
    """The checkpoint's ``AutoProcessor``; where that needs torchvision (absent) for a family listed in
    ``_IMAGE_ONLY_PROCESSORS``, its image-only stand-in (text and images behave the same; no videos)."""
    try:
        return auto_processor.from_pretrained(source, **common)
    except ImportError as error:
        if model_type not in _IMAGE_ONLY_PROCESSORS or "torchvision" not in str(error).lower():
            raise
    import importlib
    import logging

    module, name = _IMAGE_ONLY_PROCESSORS[model_type].split(":")
    logging.getLogger(__name__).warning(
        "%s: transformers' processor needs torchvision (for videos); using tga_fast's image-only %s", model_type, name
    )
    return getattr(importlib.import_module(module), name).from_pretrained(source, **common)


def load_model(path, *, device: str | None = None, dtype=None, quantization: str | None = None,
               attn_implementation: str = "sdpa", quantization_options: dict | None = None,
               trust_remote_code: bool = False, place: bool = True):
    """``(model, processor_or_tokenizer)``, the model in eval mode.

    Args:
        path: a local checkpoint folder (``config.json`` plus weights, processor / tokenizer files), or
            ``hub:<org>/<name>`` for the Hub (see the module docstring).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: a GPU when present).
        dtype: a torch dtype, ``"float32"``/``"float16"``/``"bfloat16"`` or ``"auto"`` (the checkpoint's; default:
            see :func:`parse_dtype`); the compute dtype of quantised layers unless ``quantization_options`` says.
        quantization: None, ``"4bit"`` (NF4, double quantisation) or ``"8bit"`` (LLM.int8) via bitsandbytes.
        attn_implementation: transformers' attention (``"sdpa"``, ``"eager"``...).
        quantization_options: ``BitsAndBytesConfig`` settings that replace the defaults above
            (``bnb_4bit_quant_type``, ``bnb_4bit_compute_dtype``, ``bnb_4bit_use_double_quant``).
        trust_remote_code: run the checkpoint's own Python code (only if the user asked for it).
        place: move the model to ``device``. False leaves it where ``from_pretrained`` put it (training: the Trainer
            or DeepSpeed places it, and ZeRO-3 loads it partitioned); a quantised model is always on ``device``.

    Raises:
        FileNotFoundError: ``path`` is not a folder with a ``config.json``.
        UserError: a malformed ``hub:`` id, or a Hub id while the Hub is switched off.
        ValueError: the family is not supported (the message lists the supported ones), a CUDA device without a
            GPU, or a bad option.
    """
    from transformers import AutoConfig

    source, from_hub = resolve_model_source(path)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but this torch sees no CUDA GPU (use --device cpu)")
    torch_dtype = parse_dtype(dtype, device)
    # A local folder never reaches the Hub, whatever the environment says.
    common = dict(trust_remote_code=bool(trust_remote_code), local_files_only=not from_hub)
    config = AutoConfig.from_pretrained(source, **common)
    model_type = _check_family(config)
    multimodal = bool(ARCHITECTURES[model_type].vision_tower)

    kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation, **common)
    if quantization is not None:
        kwargs["quantization_config"] = _quantization_config(quantization, model_type, torch_dtype, quantization_options)
        kwargs["device_map"] = {"": device}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires torchvision.*")
        if multimodal:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
            processor = _load_processor(AutoProcessor, source, model_type, common)
            _check_processor(processor, model_type, source)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            processor = AutoTokenizer.from_pretrained(source, **common)
    if quantization is None and place:
        model = model.to(device)
    return model.eval(), processor

"""The projector alone as ``projector.safetensors`` (and back), gathered from ZeRO-3 partitions when needed.

Stage 1 trains only the projector: this file is its result (a few MB for a 7B LLaVA) and stage 2's starting
point. Keys are the model's own state-dict names (``model.multi_modal_projector.linear_1.weight``), so
``model.load_state_dict(tensors, strict=False)`` also works; the metadata records the model type.

    export_projector(trainer.model, "out/projector.safetensors")      # every rank calls it under ZeRO-3
    load_projector(model, "out/projector.safetensors")
    export_merged("models/llava", "out/stage2", "out/stage2/merged")  # a LoRA run's adapter merged into its base
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from tga_fast.models import resolve

__all__ = ["export_merged", "export_projector", "load_projector", "projector_state_dict"]


def _unwrapped(model: nn.Module) -> nn.Module:
    """The HF model inside DeepSpeed/DDP wrappers and a peft ``PeftModel`` (whose module names carry a
    ``base_model.model.`` prefix that a plain model would not load)."""
    model = getattr(model, "module", model)
    get_base_model = getattr(type(model), "get_base_model", None)
    return get_base_model(model) if get_base_model is not None else model


def _projector(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the projector inside ``model`` (unwrapping DeepSpeed/DDP and peft wrappers)."""
    model = _unwrapped(model)
    projector = resolve(model).projector
    if projector is None:
        raise ValueError(f"{type(model).__name__} has no projector")
    for name, module in model.named_modules():
        if module is projector:
            return name, projector
    raise ValueError("the projector is not a submodule of the model")


def _is_zero3(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _gathered(module: nn.Module, modifier_rank: int | None):
    """Full parameters of a ZeRO-3 partitioned module inside the block (a no-op otherwise)."""
    if not _is_zero3(module):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=modifier_rank)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def projector_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The projector's full parameters and buffers on the CPU, keyed by their names in ``model``.

    Under ZeRO-3 every rank must call it (the gather is collective).
    """
    name, projector = _projector(model)
    with _gathered(projector, modifier_rank=None):
        tensors = {f"{name}.{key}": value.detach().cpu().clone() for key, value in projector.state_dict().items()}
    return tensors


def export_projector(model: nn.Module, path: str | Path) -> Path | None:
    """Writes the projector to ``path`` (safetensors) on rank 0; returns the path there, None on other ranks."""
    from safetensors.torch import save_file

    tensors = projector_state_dict(model)
    if _rank() != 0:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = _unwrapped(model)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"model_type": inner.config.model_type})
    return path


def load_projector(model: nn.Module, path: str | Path) -> list[str]:
    """Loads a ``projector.safetensors`` into the model's projector (also under ZeRO-3); returns the keys loaded.

    Raises ``ValueError`` naming the keys when the file does not match this projector.
    """
    from safetensors import safe_open

    name, projector = _projector(model)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    prefix = f"{name}."
    local = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    expected = set(projector.state_dict())
    if set(local) != expected:
        raise ValueError(
            f"{path}: keys {sorted(set(local) ^ expected)} do not match the projector {name!r} of this model"
        )
    with _gathered(projector, modifier_rank=0), torch.no_grad():
        if _rank() == 0 or not _is_zero3(projector):
            for key, target in projector.state_dict(keep_vars=True).items():
                if target.shape != local[key].shape:
                    raise ValueError(f"{path}: {key} has shape {tuple(local[key].shape)}, the model {tuple(target.shape)}")
                target.copy_(local[key].to(target.dtype))
    return sorted(tensors)


def export_merged(base: str | Path, adapter: str | Path, out: str | Path, *, dtype: str = "float32") -> Path:
    """The LoRA run's adapter merged into its base model, with the trained projector (a VLM's): a plain HF folder
    (model and processor, or tokenizer for a text LLM) that ``load_model`` and ``transformers`` load without peft.

    ``base``: the model folder the run started from; ``adapter``: the folder :func:`~tga_fast.training.lora.save_adapter`
    wrote. The base is reloaded unquantised in ``dtype`` (a QLoRA run's 4-bit weights are not merged into: their
    rounding would be merged too), so the merged model computes what the trained ``PeftModel`` computes on the
    unquantised base.
    """
    from tga_fast.models.loading import load_model
    from tga_fast.training.lora import load_adapter

    model, processor = load_model(base, device="cpu", dtype=dtype)
    merged = load_adapter(model, adapter).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out

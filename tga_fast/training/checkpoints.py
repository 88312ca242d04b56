"""Reloading a Trainer checkpoint's weights under the model's own parameter names (non-DeepSpeed, non-FSDP runs).

Workaround, checked 2026-11 against transformers 5.24 (upstream: huggingface/transformers#43701): ``save_pretrained``
writes checkpoints in the original layout (it reverts the key renaming of ``from_pretrained``: LLaVA's
``model.language_model.*`` is written as ``language_model.model.*``), but ``Trainer._load_from_checkpoint`` and
``Trainer._load_best_model`` reload them with ``load_state_dict(strict=False)`` and only log the mismatch. For
LLaVA no key matches, so a resumed run silently restarts from the initial weights. Remove this module once the
Trainer applies the conversion mapping itself (the resume tests then pass without it).

    load_renamed_checkpoint(model, "out/checkpoint-500")   # True: loaded here; False: leave it to transformers
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

__all__ = ["load_renamed_checkpoint"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _saved_to_own_names(model: nn.Module, own: dict) -> dict[str, str] | None:
    """``{saved name: own state-dict name}``, or None when the model's mapping converts tensors (merges, splits)
    rather than only renaming them: then the names cannot be mapped one to one here."""
    from transformers.core_model_loading import revert_weight_conversion

    by_tensor = {id(tensor): name for name, tensor in own.items()}
    names = {saved: by_tensor.get(id(tensor)) for saved, tensor in revert_weight_conversion(model, own).items()}
    return None if None in names.values() else names


def _shard_files(folder: Path) -> list[Path] | None:
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return None


def load_renamed_checkpoint(model: nn.Module, folder: str | Path) -> bool:
    """Loads ``folder``'s safetensors weights (one file or an index of shards) into ``model``, mapping the saved
    names back to the model's. Returns False, loading nothing, when there is no safetensors checkpoint or the
    mapping is not a pure renaming (the caller then uses transformers' own loader).

    Raises ``ValueError`` naming the keys when a parameter or buffer of the model is not in the checkpoint (a tied
    weight saved once under its other name counts as present), or the checkpoint holds a tensor the model does not
    know. Extra state entries (neither parameters nor buffers, e.g. the quantisation state bitsandbytes writes next
    to a 4-bit weight) are not consumed by ``load_state_dict`` while their weights are, so they are tolerated.
    """
    from safetensors.torch import load_file

    files = _shard_files(Path(folder))
    if files is None:
        return False
    own = model.state_dict()
    names = _saved_to_own_names(model, own)
    if names is None:
        return False
    state = {}
    for file in files:
        state.update({names.get(name, name): tensor for name, tensor in load_file(str(file), device="cpu").items()})
    result = model.load_state_dict(state, strict=False)
    # save_pretrained drops the second name of tied weights (lm_head tied to the embeddings): loaded through the other
    loaded_storage = {own[key].data_ptr() for key in set(own) - set(result.missing_keys)}
    missing = [key for key in result.missing_keys if own[key].data_ptr() not in loaded_storage]
    tensors = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    unexpected = [key for key in result.unexpected_keys if key not in set(own) - tensors]
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return True

"""Trainer checkpoints: which ones are complete (what resume may take), and reloading a checkpoint's weights
under the model's own parameter names.

Complete: ``Trainer._save_checkpoint`` (transformers 5.24) writes the weights, then the optimizer, scheduler and
RNG states, and ``trainer_state.json`` last. A checkpoint is complete when its ``trainer_state.json`` parses and
names the folder's step, its weights are all there (one safetensors file whose header and size agree, every shard
of an index, or DeepSpeed's ``global_step<N>`` folder) and its optimizer state is there (``optimizer.pt``, or the
DeepSpeed folder, which holds the optimizer partitions). A run killed while saving leaves a newest checkpoint
that fails one of these, and resume takes the one before.

    last_complete_checkpoint("out/stage1")   # ("out/stage1/checkpoint-500", [("out/stage1/checkpoint-600", why)])

Reloading a Trainer checkpoint's weights under the model's own parameter names (non-DeepSpeed, non-FSDP runs).

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
import logging
import re
from pathlib import Path

from torch import nn

__all__ = ["checkpoint_problems", "find_checkpoints", "last_complete_checkpoint", "load_renamed_checkpoint"]

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"

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


def find_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<N>`` folders of ``output_dir``, oldest step first (empty when there is none or no folder)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in folder.iterdir() if path.is_dir() and (m := _CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found)]


def _safetensors_problem(file: Path) -> str | None:
    from safetensors import safe_open

    if not file.is_file():
        return f"{file.name} is missing"
    try:  # reads the header only; a file cut short no longer matches the sizes it announces
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # the safetensors error types differ between versions
        return f"{file.name} is unreadable ({type(error).__name__}: {str(error)[:80]})"
    return None


def _weights_problem(folder: Path, deepspeed: bool) -> str | None:
    if (folder / SINGLE_FILE).exists():
        return _safetensors_problem(folder / SINGLE_FILE)
    if (folder / INDEX_FILE).is_file():
        try:
            shards = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            return f"{INDEX_FILE} is unreadable"
        for shard in shards:
            problem = _safetensors_problem(folder / shard)
            if problem:
                return problem
        return None
    if any(folder.glob("adapter_model.*")) and not deepspeed:
        # a LoRA checkpoint: the adapter, and the projector that trains in full beside it (TGATrainer._save)
        return _safetensors_problem(folder / "projector.safetensors") if _adapter_has_projector(folder) else None
    if deepspeed or any(folder.glob("pytorch_model*.bin")):
        return None
    return f"no model weights ({SINGLE_FILE}, {INDEX_FILE} or a DeepSpeed global_step folder)"


def _adapter_has_projector(folder: Path) -> bool:
    """Whether a LoRA checkpoint's base model (peft's ``base_model_name_or_path``, read before any model is loaded)
    is of a family with a projector; False only for a text LLM's adapter, which has no projector file beside it.
    True when the base cannot be read: the projector file is then required, as before text LLMs trained."""
    from tga_fast.models.adapters import ARCHITECTURES

    try:
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        model_type = json.loads((Path(base) / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return model_type not in ARCHITECTURES or bool(ARCHITECTURES[model_type].projector)


def checkpoint_problems(folder: str | Path) -> list[str]:
    """Why ``folder`` is not a complete Trainer checkpoint (see the module docstring); empty when it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    match = _CHECKPOINT.match(folder.name)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        problems.append(f"no {STATE_FILE} (the Trainer writes it last: the save did not finish)")
    else:
        try:
            state = json.loads(state_file.read_text())
            step = state["global_step"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{STATE_FILE} is unreadable or cut short")
        else:
            if match and int(match.group(1)) != step:
                problems.append(f"{STATE_FILE} says step {step}, the folder's name {match.group(1)}")
    deepspeed = any(path.is_dir() for path in folder.glob("global_step*"))
    weights = _weights_problem(folder, deepspeed)
    if weights:
        problems.append(weights)
    if not deepspeed and not (folder / "optimizer.pt").is_file():
        problems.append("no optimizer state (optimizer.pt or a DeepSpeed global_step folder)")
    return problems


def last_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``(newest complete checkpoint or None, [(newer incomplete checkpoint, why)])``; each skipped one is logged."""
    skipped = []
    for folder in reversed(find_checkpoints(output_dir)):
        problems = checkpoint_problems(folder)
        if not problems:
            return folder, skipped
        skipped.append((folder, "; ".join(problems)))
        logger.warning("resume: skipping incomplete checkpoint %s: %s", folder, skipped[-1][1])
    return None, skipped


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

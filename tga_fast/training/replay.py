"""Text replay: text-only records (the LLM's own instruction data, text safety samples) mixed into TGA training.

They get the LM loss alone (no image, so no alignment term) and keep the LLM's text behaviour while the projector
and LLM learn images. With ``group_by_modality`` (the default) every step is all-image or all-text on every
process, so the replay share is per epoch, not per batch: ``ratio`` 0.2 makes one step in five (about) a text
step. That keeps ZeRO/DDP's processes running the same modules each step.

    added = mix_text_replay(dataset, "data/text_replay.jsonl", ratio=0.2, seed=0)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from tga_fast.errors import UserError

__all__ = ["mix_text_replay", "replay_count"]

logger = logging.getLogger(__name__)


def replay_count(main: int, available: int, ratio: float | None) -> int:
    """How many replay samples make ``ratio`` of ``main + count`` (every available one when ratio is None)."""
    if ratio is None:
        return available
    if not 0 <= ratio < 1:
        raise UserError(f"text_replay_ratio must be a share in [0, 1), got {ratio}")
    return round(ratio / (1 - ratio) * main)


def mix_text_replay(dataset, path: str | os.PathLike, ratio: float | None = None, *, seed: int = 0) -> int:
    """Appends text-only records of ``path`` to ``dataset.records`` (a :class:`~tga_fast.training.data.TGADataset`,
    whose processor encodes them); returns how many were added.

    The records are drawn in a seeded random order, repeated when the file has fewer than needed. A record with an
    image is not text replay: it is skipped, like every bad record, into ``dataset.skipped`` (named
    ``<file>: <key>``).

    Raises:
        UserError: the file has no usable text-only record, naming it and the first reasons.
    """
    from tga_fast.training.data import TGADataset

    path = Path(path)
    replay = TGADataset(path, dataset.processor, max_length=dataset.max_length, use_retrieved=False, progress=False)
    texts = [record for record in replay.records if record.image is None]
    skipped = [(f"{path.name}: {key}", reason) for key, reason in replay.skipped]
    skipped += [(f"{path.name}: {r.key}", "a text-replay record must be text-only (it has an image)")
                for r in replay.records if r.image is not None]
    dataset.skipped.extend(skipped)
    if not texts:
        raise UserError(f"DataConfig.text_replay_path: no text-only record in {path} "
                        f"(skipped {len(skipped)}: {skipped[:3]})")
    count = replay_count(len(dataset.records), len(texts), ratio)
    if count == 0:
        logger.warning("text replay: ratio %s of %d samples is no sample; nothing from %s added", ratio,
                       len(dataset.records), path)
        return 0
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(texts), generator=generator) for _ in range(-(-count // len(texts)))])
    dataset.records.extend(texts[i] for i in order[:count].tolist())
    logger.info("text replay: %d samples from %s (%d text-only records) added to %d", count, path, len(texts),
                len(dataset.records) - count)
    return count

"""A shuffling sampler whose every training micro-step is all image samples or all text-only samples, on every
process (LLaVA's ``group_by_modality`` rule).

Why: a process whose batch has no image runs neither the vision tower nor the projector, so its forward calls
other modules and its backward yields other gradients, in another order, than a process with images. DeepSpeed
ZeRO-3 asserts that all ranks trace the same module order, ZeRO-2 fills its gradient buckets in the order the
gradients come, and DDP expects the same parameters to be used: a mixed step is a collective mismatch or a hang.

The Trainer hands consecutive per-device batches to the ranks in turn, so a group is ``per_device_batch *
world_size`` consecutive indices. Each modality is shuffled, its last group filled with repeated samples of the
same modality, and the groups shuffled; ``set_epoch`` reshuffles.

    index order:  [img img img img | txt txt txt txt | img img img img | ...]   (group 4 = batch 2 x 2 ranks)
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

__all__ = ["ModalityGroupedSampler"]


class ModalityGroupedSampler(torch.utils.data.Sampler[int]):
    """Args:
    has_image: per dataset index, whether the sample has an image.
    group_size: per-device batch size x number of processes.
    seed: the shuffle seed (the epoch is added).
    """

    def __init__(self, has_image: Sequence[bool], group_size: int, seed: int = 0):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if not has_image:
            raise ValueError("has_image is empty")
        self.has_image = torch.tensor([bool(x) for x in has_image])
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _groups(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups: list[torch.Tensor] = []
        for indices in (self.has_image.nonzero()[:, 0], (~self.has_image).nonzero()[:, 0]):
            if len(indices) == 0:
                continue
            order = indices[torch.randperm(len(indices), generator=generator)]
            missing = -len(order) % self.group_size  # fill the last group from the same modality
            if missing:
                order = torch.cat([order, order[torch.randint(len(order), (missing,), generator=generator)]])
            groups.extend(order.split(self.group_size))
        shuffled = torch.randperm(len(groups), generator=generator)
        return [groups[i] for i in shuffled]

    def __iter__(self) -> Iterator[int]:
        for group in self._groups():
            yield from group.tolist()

    def __len__(self) -> int:
        count = 0
        for n in (int(self.has_image.sum()), int((~self.has_image).sum())):
            count += -(-n // self.group_size) * self.group_size
        return count

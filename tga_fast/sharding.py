"""Shards of a data-parallel run: ``--shard k/n`` makes a process take every n-th record, starting at record k.

Records are dealt round-robin (record i goes to shard ``i % n``) rather than cut into contiguous blocks, because:

- a shard needs no count of the records before it starts: ``tga-fast retrieve`` streams its input and resumes
  by count, and a block split would need a full pass over the data first;
- data sets are often sorted (by scene, source, length or image size), and a block split hands one process all
  the slow records while the others idle; dealing them out gives every process a like share of each kind;
- the whole run is still one deterministic function of the input order, so ``tga-fast merge`` can put every
  record back where one process would have written it.

``k`` is 0-based (``0/8`` .. ``7/8``), like ``CUDA_VISIBLE_DEVICES`` and a Slurm array ``--array=0-7``
(``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``).

    shard = parse_shard("1/4")            # Shard(index=1, count=4)
    list(shard.select("abcdefghij"))      # ['b', 'f', 'j']
    shard.part_file("out.jsonl")          # Path('out.part-1-of-4.jsonl'); part_folder("res"): Path('res.part-1-of-4')
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

from tga_fast.errors import UserError

__all__ = ["Shard", "order_parts", "parse_shard", "settings_difference"]

T = TypeVar("T")
_SHARD = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: the records at positions ``index, index + count, ...``."""

    index: int
    count: int

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise UserError(f"--shard k/n: n must be a whole number >= 1, got {self.count!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise UserError(f"--shard {self.index}/{self.count}: k is 0-based and must be in 0..{self.count - 1} "
                            f"(a Slurm array of n tasks: --array=0-{self.count - 1})")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Iterable[T]) -> Iterator[T]:
        """The items of this shard, in their order (every ``count``-th, from position ``index``)."""
        for position, item in enumerate(items):
            if position % self.count == self.index:
                yield item

    def size(self, total: int) -> int:
        """How many of ``total`` records this shard takes."""
        return len(range(self.index, total, self.count))

    @property
    def tag(self) -> str:
        """``part-k-of-n``: what a part's file or folder name carries."""
        return f"part-{self.index}-of-{self.count}"

    def part_file(self, out: str | os.PathLike) -> Path:
        """The part of the file ``out`` this shard writes: ``a/out.part-k-of-n.jsonl`` for ``a/out.jsonl`` (parts
        are JSONL whatever ``out`` is: they are streamed and resumed; ``tga-fast merge`` writes ``out``)."""
        out = Path(out)
        return out.with_name(f"{out.stem}.{self.tag}.jsonl")

    def part_folder(self, out: str | os.PathLike) -> Path:
        """The part of the result folder ``out`` this shard writes: ``a/res.part-k-of-n`` for ``a/res``."""
        out = Path(out)
        return out.with_name(f"{out.name}.{self.tag}")

    def to_json(self) -> dict:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str | None) -> Shard | None:
    """``"k/n"`` as a :class:`Shard` (None stays None); a :class:`UserError` naming ``--shard`` otherwise."""
    if text is None:
        return None
    match = _SHARD.fullmatch(str(text))
    if not match:
        raise UserError(f"--shard must be k/n (0-based k, e.g. 0/8 .. 7/8), got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def order_parts(parts: Sequence[tuple[Shard, T]], names: Sequence[str]) -> list[T]:
    """The parts of one sharded run in shard order, after checking that they are all there exactly once.

    Args:
        parts: ``(shard, part)`` per part, as each part recorded it.
        names: what to call each part in an error (its path).

    Raises:
        UserError: no parts, parts of different ``n``, a shard given twice, or a shard missing (one line naming
            the parts).
    """
    if not parts:
        raise UserError("no parts to merge")
    counts = {shard.count for shard, _ in parts}
    if len(counts) > 1:
        seen = ", ".join(f"{name} is {shard}" for (shard, _), name in zip(parts, names))
        raise UserError(f"the parts come from runs of different n ({seen}): merge the parts of one run")
    count = counts.pop()
    by_index: dict[int, int] = {}
    for position, (shard, _) in enumerate(parts):
        if shard.index in by_index:
            raise UserError(f"shard {shard} is given twice: {names[by_index[shard.index]]} and {names[position]}")
        by_index[shard.index] = position
    missing = [f"{k}/{count}" for k in range(count) if k not in by_index]
    if missing:
        raise UserError(f"shard {', '.join(missing)} missing: {len(parts)} of {count} parts given "
                        "(run the missing shards, or pass every part)")
    return [parts[by_index[k]][1] for k in range(count)]


def settings_difference(first: dict, other: dict, ignore: Iterable[str] = ("shard",)) -> list[str]:
    """The keys whose values differ between two parts' settings (``ignore`` aside), sorted."""
    ignore = set(ignore)
    keys = (set(first) | set(other)) - ignore
    return sorted(k for k in keys if first.get(k) != other.get(k))


def main() -> None:
    """Shows how ten records are dealt to three shards."""
    for k in range(3):
        shard = Shard(k, 3)
        print(f"{shard}: {list(shard.select(range(10)))} -> {shard.part_file('out.jsonl')}")


if __name__ == "__main__":
    main()

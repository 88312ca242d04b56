"""``tga-fast merge``: join the parts of a sharded ``retrieve`` or ``eval dsr`` run (``--shard k/n``) into what one
process would have written, checking that every record is there exactly once.

- ``retrieve`` parts (``OUT.part-k-of-n.jsonl`` files): the output JSONL (or JSON list), records in input order
  (:func:`tga_fast.retrieval.build.merge_retrieved`).
- ``eval dsr`` parts (``OUT.part-k-of-n`` folders): one DSR result recomputed from all records with
  :meth:`DSRResult.from_records <tga_fast.evaluation.dsr.DSRResult.from_records>`, so every interval is computed
  over the whole set (clusters that span shards included), never averaged over parts (:func:`merge_dsr`).

Refused, with one line naming the parts: a part missing or given twice, parts of different ``n`` or made with
different settings, a part unfinished or changed, a sample in two parts or in none.

    tga-fast merge data/train_r.part-*-of-8.jsonl --out data/train_r.jsonl
    tga-fast merge results/dsr.part-*-of-8 --out results/dsr
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

__all__ = ["add_merge", "merge_dsr", "run_merge"]


def merge_dsr(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False):
    """Joins the result folders of a sharded ``eval dsr`` run into one :class:`~tga_fast.evaluation.dsr.DSRResult`
    saved in ``out``, its records in the input order and its rates recomputed from all of them; the environment
    is the first part's, and ``settings["merged_from"]`` names the parts. A ``judge_outputs.jsonl`` in the parts
    is joined too. Returns the merged result.

    Raises:
        UserError: a part that is not a sharded DSR result, missing, given twice, of another ``n``, with other
            settings, or whose samples are not exactly its share; ``out`` holding a result without ``overwrite``.
    """
    from tga_fast.errors import UserError
    from tga_fast.evaluation.dsr import DSRResult
    from tga_fast.files.atomic import check_writable
    from tga_fast.results import RESULT_FILE
    from tga_fast.sharding import Shard, order_parts, settings_difference

    check_writable(Path(out) / RESULT_FILE, overwrite=overwrite)
    names = [str(p) for p in parts]
    loaded = []
    for name in names:
        try:
            result = DSRResult.load(name)
        except (ValueError, TypeError, KeyError) as error:  # another result kind, or a hand-edited file
            raise UserError(f"{name} is not a DSR result: {error}") from None
        recorded = result.settings.get("shard")
        if not isinstance(recorded, dict):
            raise UserError(f"{name} is the result of an unsharded run (no --shard): there is nothing to merge")
        if not {"index", "count", "total", "ids"} <= set(recorded):
            raise UserError(f"{name}: its settings.shard lacks index, count, total or ids (a hand-edited result?)")
        loaded.append((Shard(recorded["index"], recorded["count"]), (name, result)))
    ordered = order_parts(loaded, names)
    first_name, first = ordered[0]
    total = first.settings["shard"]["total"]
    for name, result in ordered[1:]:
        differ = settings_difference(first.settings, result.settings)
        if differ:
            raise UserError(f"{name} was made with other settings than {first_name} (differs in: {', '.join(differ)})"
                            ": merge the parts of one run")
        if result.settings["shard"]["total"] != total:
            raise UserError(f"{name} was one of {result.settings['shard']['total']} samples but {first_name} of "
                            f"{total}: the data changed between the shards' runs")
    count = len(ordered)
    owner: dict[str, str] = {}
    assigned = []
    for k, (name, result) in enumerate(ordered):
        ids = list(result.settings["shard"]["ids"])
        if len(ids) != Shard(k, count).size(total):
            raise UserError(f"{name} holds {len(ids)} samples, but shard {k}/{count} of {total} samples has "
                            f"{Shard(k, count).size(total)}")
        done = [r.id for r in result.records] + [s["id"] for s in result.skipped]
        if sorted(done) != sorted(ids):
            raise UserError(f"{name}: its records and skipped samples are not the samples its shard was given")
        for sample_id in ids:
            if sample_id in owner:
                raise UserError(f"sample {sample_id!r} is in two parts: {owner[sample_id]} and {name}")
            owner[sample_id] = name
        assigned.append(ids)
    # Sample p of the input went to shard p % n as its (p // n)-th sample (tga_fast.sharding).
    order = [assigned[p % count][p // count] for p in range(total)]
    records = {r.id: r for _, result in ordered for r in result.records}
    skipped = {s["id"]: s for _, result in ordered for s in result.skipped}
    settings = {k: v for k, v in first.settings.items() if k != "shard"}
    settings["merged_from"] = names_in_order = [name for name, _ in ordered]
    merged = DSRResult.from_records([records[i] for i in order if i in records], settings,
                                    [skipped[i] for i in order if i in skipped])
    merged.environment = first.environment
    out = merged.save(out, overwrite=overwrite)
    _merge_judge_outputs(names_in_order, out, order)
    return merged


def _merge_judge_outputs(parts: list[str], out: Path, order: list[str]) -> None:
    """``judge_outputs.jsonl`` of the parts, joined as one run writes it: per judge, its rows in record order."""
    from tga_fast.commands.judges import JUDGE_OUTPUTS_FILE
    from tga_fast.files import read_jsonl, write_text

    files = [Path(p) / JUDGE_OUTPUTS_FILE for p in parts]
    if not any(f.is_file() for f in files):
        return
    judges, rows = [], {}
    for file in files:
        for line in read_jsonl(file) if file.is_file() else ():
            if line.ok and isinstance(line.value, dict):
                if line.value.get("judge") not in judges:
                    judges.append(line.value.get("judge"))
                rows[(line.value.get("judge"), line.value.get("id"))] = line.value
    lines = [json.dumps(rows[(judge, i)], ensure_ascii=False) + "\n" for judge in judges for i in order
             if (judge, i) in rows]
    write_text(out / JUDGE_OUTPUTS_FILE, "".join(lines))


def run_merge(args: argparse.Namespace) -> int:
    """Merges ``args.parts`` into ``args.out``: folders are ``eval dsr`` parts, files ``retrieve`` parts (user
    errors: ``tga_fast.cli``)."""
    from tga_fast.errors import UserError

    missing = [p for p in args.parts if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"part {missing[0]} does not exist")
    folders = [Path(p).is_dir() for p in args.parts]
    if all(folders):
        result = merge_dsr(args.parts, args.out, overwrite=args.overwrite)
        print(result.summary())
        print(f"merged {len(args.parts)} parts ({len(result.records)} records) into {args.out}")
    elif not any(folders):
        from tga_fast.retrieval.build import merge_retrieved

        counts = merge_retrieved(args.parts, args.out, overwrite=args.overwrite)
        print(json.dumps(counts, indent=2))
        print(f"merged {len(args.parts)} parts into {args.out}")
    else:
        raise UserError("the parts mix folders (eval dsr results) and files (retrieve outputs): merge one run's parts")
    return 0


def add_merge(commands) -> None:
    """Adds ``merge PART... --out OUT [--overwrite]`` to the CLI's subparsers."""
    merge = commands.add_parser(
        "merge", help="join the parts of a sharded retrieve or eval dsr run (--shard k/n)",
        description="Join the N parts of a `--shard k/N` run into what one process would have written: retrieve "
        "parts (OUT.part-k-of-N.jsonl files) into OUT in input order; eval dsr parts (OUT.part-k-of-N folders) into "
        "one result whose rates and intervals are recomputed from all records. Refuses a missing or repeated part, "
        "parts of different N or settings, and unfinished parts.",
    )
    merge.add_argument("parts", nargs="+", help="every part of one run, in any order (a shell glob will do)")
    merge.add_argument("--out", required=True, help="the merged output: a .jsonl/.json file (retrieve) or a folder "
                       "(eval dsr)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    merge.set_defaults(run=run_merge)

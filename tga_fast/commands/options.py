"""What ``tga-fast analyze`` and ``tga-fast eval dsr`` share: the checkpoint, data and output options, their
checks (before minutes of model loading), the data loading, and the settings every result records."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["add_model_and_data_options", "check_common", "cli_settings", "load_data"]


def add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """``--model --data --out --overwrite --batch-size --device --dtype --quantization --image-root
    --with-retrieved --system-prompt --cluster-by --no-progress``."""
    add = parser.add_argument
    add("--model", required=True, help="local HF checkpoint folder")
    add("--data", required=True, help="JSONL evaluation set")
    add("--out", required=True, help="output folder for result.json, samples.jsonl and figure.png")
    add("--overwrite", action="store_true", help="replace the result already in --out")
    add("--batch-size", dest="batch_size", type=int, default=8)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    add("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
        help="default: bfloat16 on a GPU, float32 on the CPU")
    add("--quantization", choices=["4bit", "8bit"], default=None, help="bitsandbytes quantisation of the LLM")
    add("--image-root", dest="image_root", default=None,
        help="folder image paths are relative to and must stay inside (default: the data file's folder)")
    add("--with-retrieved", dest="with_retrieved", action="store_true",
        help="put each sample's retrieved text first in the prompt (METHOD.md 4: evaluate with and without it)")
    add("--system-prompt", dest="system_prompt", default=None, help="a (safety) system prompt for every request")
    add("--cluster-by", dest="cluster_by", choices=["concept", "scene", "text", "image", "prompt", "id"],
        default="concept", help="the sample field intervals are clustered by: samples that share it are not "
        "independent (default: concept, the sample's concept field, else its text; id: no clustering)")
    add("--no-progress", dest="no_progress", action="store_true")


def check_common(args: argparse.Namespace) -> None:
    """The checks that need neither data nor model: ``--batch-size`` >= 1, and ``--out`` holds no result unless
    ``--overwrite`` (:class:`~tga_fast.errors.UserError` naming the flag or the file)."""
    from tga_fast.errors import require_positive
    from tga_fast.files.atomic import check_writable
    from tga_fast.results import RESULT_FILE

    require_positive(args.batch_size, "--batch-size")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    check_writable(out / RESULT_FILE, overwrite=args.overwrite)


def load_data(args: argparse.Namespace, logger: logging.Logger, *, require_images: bool):
    """The evaluation set of ``--data`` (each bad line is logged once, by the loader, and the run goes on)."""
    from tga_fast.evaluation.data import load_eval_set

    data = load_eval_set(args.data, image_root=args.image_root, require_images=require_images)
    logger.info("%d samples (%d toxic) in %d scenes; %d bad lines skipped", len(data),
                sum(s.toxic for s in data.samples), len(data.scenes), len(data.errors))
    return data


def cli_settings(args: argparse.Namespace, data) -> dict:
    """What a CLI run adds to its result's settings: the model, the data and its bad lines, dtype, quantization."""
    return {"model": str(args.model), "data": str(args.data),
            "bad_lines": [{"line": number, "reason": reason} for number, reason in data.errors],
            "dtype": args.dtype, "quantization": args.quantization}

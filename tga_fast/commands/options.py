"""What ``tga-fast analyze`` and ``tga-fast eval dsr`` share: the checkpoint and data options and the data loading
that logs bad lines."""

from __future__ import annotations

import argparse
import logging

__all__ = ["add_model_and_data_options", "load_data"]


def add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """``--model --data --out --batch-size --device --dtype --quantization --image-root --with-retrieved
    --system-prompt --no-progress``."""
    add = parser.add_argument
    add("--model", required=True, help="local HF checkpoint folder")
    add("--data", required=True, help="JSONL evaluation set")
    add("--out", required=True, help="output folder for result.json and figure.png")
    add("--batch-size", dest="batch_size", type=int, default=8)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    add("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
        help="default: bfloat16 on a GPU, float32 on the CPU")
    add("--quantization", choices=["4bit", "8bit"], default=None, help="bitsandbytes quantisation of the LLM")
    add("--image-root", dest="image_root", default=None,
        help="folder image paths are relative to (default: the data file's folder)")
    add("--with-retrieved", dest="with_retrieved", action="store_true",
        help="put each sample's retrieved text first in the prompt (METHOD.md 4: evaluate with and without it)")
    add("--system-prompt", dest="system_prompt", default=None, help="a (safety) system prompt for every request")
    add("--no-progress", dest="no_progress", action="store_true")


def load_data(args: argparse.Namespace, logger: logging.Logger, *, require_images: bool):
    """The evaluation set of ``--data``; each bad line is logged with its number (the run goes on without it)."""
    from tga_fast.evaluation.data import load_eval_set

    data = load_eval_set(args.data, image_root=args.image_root, require_images=require_images)
    for number, message in data.errors:
        logger.warning("%s line %d skipped: %s", args.data, number, message)
    logger.info("%d samples (%d toxic) in %d scenes", len(data), sum(s.toxic for s in data.samples), len(data.scenes))
    return data

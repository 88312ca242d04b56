"""``tga-fast <command>``: parse the command's options and call one library function."""

from __future__ import annotations

import argparse
import sys

# Each command module only declares its options; the heavy imports happen inside its handler.
from tga_fast.analysis.command import add_analyze
from tga_fast.evaluation.command import add_eval
from tga_fast.toy.command import add_demo
from tga_fast.training.command import add_train


def _env(args: argparse.Namespace) -> int:
    from tga_fast.diagnostics import report

    print(report())
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    import json
    import logging

    from tga_fast.retrieval.build import RetrieveConfig, retrieve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    options["progress"] = not options.pop("no_progress")
    print(json.dumps(retrieve(RetrieveConfig(**options)), indent=2))
    return 0


def _add_retrieve(commands) -> None:
    retrieve = commands.add_parser(
        "retrieve", help="write `retrieved` (top-k corpus text per image, self-match rule) into LLaVA data",
        description="Embed a caption corpus (+ toxic texts), embed each record's image, retrieve top-k and write "
        "the records back with `retrieved`, resumably (rerun the same command after an interruption).",
    )
    add = retrieve.add_argument
    add("--data", required=True, help="LLaVA-format .json or .jsonl")
    add("--corpus", required=True, help="caption corpus: .txt (one per line), .jsonl or .json")
    add("--out", required=True, help="output .jsonl (or .json, written at the end)")
    add("--image-encoder", dest="image_encoder", help="local CLIP/SigLIP folder (queries are images)")
    add("--text-encoder", dest="text_encoder", help="local folder for the corpus (default: the image encoder)")
    add("--image-folder", dest="image_folder", default=".", help="root of the records' image paths")
    add("--toxic-corpus", dest="toxic_corpus", help="toxic texts added to the corpus (flagged retrieved_toxic)")
    add("--query", choices=["image", "caption"], default="image", help="what is embedded per record")
    add("--top-k", dest="top_k", type=int, default=1, help="candidates kept (retrieved_topk when > 1)")
    add("--self-match", dest="self_match", choices=["half", "next", "keep"], default="half",
        help="a retrieved text equal to the caption: its first half, the next candidate, or kept")
    add("--caption-field", dest="caption_field", default="caption")
    add("--text-field", dest="text_field", default="text", help="text field of corpus objects")
    add("--index-dir", dest="index_dir", help="corpus index cache (default: <out>.index)")
    add("--backend", choices=["auto", "faiss", "torch"], default="auto")
    add("--index-kind", dest="index_kind", choices=["flat", "ivf"], default="flat")
    add("--batch-size", dest="batch_size", type=int, default=256, help="records per search and durable write")
    add("--encoder-batch-size", dest="encoder_batch_size", type=int, default=64)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    add("--dtype", default=None, help="float32, float16, bfloat16 (default: float16 on GPU, float32 on CPU)")
    add("--workers", type=int, default=4, help="image-decoding threads")
    add("--no-progress", dest="no_progress", action="store_true")
    add("--overwrite", action="store_true", help="start again instead of resuming")
    retrieve.set_defaults(run=_retrieve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tga-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="versions, settings and which kernel serves each op").set_defaults(run=_env)
    _add_retrieve(commands)
    add_demo(commands)
    add_train(commands)
    add_analyze(commands)
    add_eval(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

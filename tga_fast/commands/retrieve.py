"""``tga-fast retrieve``: write ``retrieved`` (top-k corpus text per image, self-match rule) into LLaVA data."""

from __future__ import annotations

import argparse


def _retrieve(args: argparse.Namespace) -> int:
    import json

    from tga_fast.retrieval.build import RetrieveConfig, retrieve

    options = {k: v for k, v in vars(args).items() if k not in ("command", "run", "verbose")}
    options["progress"] = not options.pop("no_progress")
    print(json.dumps(retrieve(RetrieveConfig(**options)), indent=2))
    return 0


def add_retrieve(commands) -> None:
    retrieve = commands.add_parser(
        "retrieve", help="write `retrieved` (top-k corpus text per image, self-match rule) into LLaVA data",
        description="Embed a caption corpus (+ toxic texts), embed each record's image, retrieve top-k and write "
        "the records back with `retrieved`, resumably (rerun the same command after an interruption). Bad records "
        "(unreadable lines, bad or missing images) are kept with `retrieval_error`, so output line i is input "
        "record i.",
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
    add("--overwrite", action="store_true",
        help="start again instead of resuming, replacing an existing --out (never replaced without it)")
    add("--shard", default=None, metavar="K/N",
        help="this process's share of a data-parallel run: records K, K+N, K+2N, ... (K 0-based) into "
        "<out stem>.part-K-of-N.jsonl; join the N parts with `tga-fast merge`")
    retrieve.set_defaults(run=_retrieve)

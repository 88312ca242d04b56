"""``tga-fast analyze <analysis>``: one of the paper's five analyses on a local checkpoint and a JSONL evaluation
set (format: tga_fast.evaluation.data); writes ``result.json`` and ``figure.png``."""

from __future__ import annotations

import argparse
import logging

from tga_fast.commands.options import add_model_and_data_options, load_data

__all__ = ["ANALYSES", "add_analyze", "run_analyze"]

ANALYSES = ("safety_layers", "attention_share", "knockout_sweep", "modality_similarity", "steering_sweep")
# Analyses that read the images (the others run on the text condition only).
_NEED_IMAGES = ("modality_similarity", "steering_sweep")
logger = logging.getLogger("tga_fast.analyze")


def run_analyze(args: argparse.Namespace) -> int:
    """Loads the data and the model, runs the analysis, saves (user errors: ``tga_fast.cli``)."""
    import tga_fast.analysis as analysis
    from tga_fast.models.loading import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    # Data first: a bad file fails in a second, before minutes of model loading.
    need_images = args.analysis in _NEED_IMAGES or (args.analysis == "safety_layers" and args.condition == "image")
    data = load_data(args, logger, require_images=need_images)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization)
    common = dict(batch_size=args.batch_size, progress=not args.no_progress, with_retrieved=args.with_retrieved,
                  system_prompt=args.system_prompt)
    sweep = dict(window=args.window, max_new_tokens=args.max_new_tokens)
    if args.judge == "logit":  # refusal-token mass at the first answer position: no generation
        from tga_fast.evaluation.judges import LogitJudge

        sweep["judge"] = LogitJudge(processor)
    run = getattr(analysis, args.analysis)
    if args.analysis in ("knockout_sweep", "steering_sweep"):
        result = run(model, processor, data.samples, **common, **sweep)
    elif args.analysis == "modality_similarity":
        result = run(model, processor, data.samples, clip=args.clip, **common)
    elif args.analysis == "safety_layers":
        result = run(model, processor, data.samples, condition=args.condition, **common)
    else:
        result = run(model, processor, data.samples, **common)
    result.settings.update({"model": str(args.model), "data": str(args.data),
                            "bad_lines": [n for n, _ in data.errors], "dtype": args.dtype,
                            "quantization": args.quantization})
    out = result.save(args.out)
    print(f"wrote {out / 'result.json'} and {out / 'figure.png'}")
    return 0


def add_analyze(commands) -> None:
    """Adds ``analyze`` to the CLI's subparsers."""
    parser = commands.add_parser(
        "analyze", help="the paper's analyses: safety layers, attention share, knockout, similarity, steering",
        description="Run one analysis of METHOD.md section 3 on a local HF checkpoint and a JSONL evaluation set "
        "(see tga_fast/evaluation/data.py for the format); writes result.json and figure.png into --out.",
    )
    add = parser.add_argument
    add("analysis", choices=ANALYSES)
    add_model_and_data_options(parser)
    add("--window", type=int, default=5, help="layers per window (knockout_sweep, steering_sweep)")
    add("--max-new-tokens", dest="max_new_tokens", type=int, default=64,
        help="generation length (knockout_sweep, steering_sweep)")
    add("--judge", choices=["keyword", "logit"], default="keyword",
        help="sweeps: keyword = GCG refusal phrases in the generated answer; logit = refusal-token probability "
        "mass at the first answer position (no generation)")
    add("--condition", choices=["text", "image"], default="text",
        help="safety_layers: the toxic content as text (the paper's setting) or as the image")
    add("--clip", default=None, help="local CLIP-style folder for the reference line (modality_similarity)")
    parser.set_defaults(run=run_analyze)

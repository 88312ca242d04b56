"""``tga-fast eval dsr``: the DSR of a local checkpoint on a JSONL evaluation set (format: tga_fast.evaluation.data)."""

from __future__ import annotations

import argparse
import logging

from tga_fast.commands.judges import add_judge_flags
from tga_fast.commands.options import add_model_and_data_options, check_common, cli_settings, load_data

__all__ = ["add_eval", "run_eval_dsr"]

logger = logging.getLogger("tga_fast.eval")


def run_eval_dsr(args: argparse.Namespace) -> int:
    """Loads the model and data, evaluates, writes ``result.json``, ``samples.jsonl`` and ``figure.png`` (user
    errors: ``tga_fast.cli``)."""
    from tga_fast.errors import require_positive
    from tga_fast.commands.judges import judges_from_args, print_agreement, write_judge_outputs
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.models.loading import load_model

    # Arguments, output and data first: a mistake fails in a second, before minutes of model loading.
    check_common(args)
    require_positive(args.max_new_tokens, "--max-new-tokens")
    data = load_data(args, logger, require_images=args.condition == "image")
    # So are bad judge flags, a bad keyword file or template and a missing classifier folder; the logit judge needs
    # the tokenizer and the hf judge its own model, so they wait for the model.
    judges_from_args(args, None, keyword_only=True)
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization)
    judge, extra_judges = judges_from_args(args, processor)
    generation_kwargs = None
    if args.do_sample:
        generation_kwargs = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    result = evaluate_dsr(
        model, processor, data.samples, condition=args.condition, with_retrieved=args.with_retrieved,
        system_prompt=args.system_prompt, judge=judge, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, generation_kwargs=generation_kwargs, progress=not args.no_progress,
        settings={**cli_settings(args, data), "seed": args.seed}, cluster_by=args.cluster_by,
        extra_judges=extra_judges,
    )
    out = result.save(args.out, overwrite=args.overwrite)
    write_judge_outputs(out, result, [judge, *extra_judges])
    print(result.summary())
    print_agreement(result, [judge, *extra_judges])
    print(f"wrote {out / 'result.json'}, {out / 'samples.jsonl'} and {out / 'figure.png'}")
    return 0


def add_eval(commands) -> None:
    """Adds ``eval`` (with the ``dsr`` subcommand) to the CLI's subparsers."""
    evaluate = commands.add_parser("eval", help="evaluations of a checkpoint (dsr: defense success rate)")
    kinds = evaluate.add_subparsers(dest="evaluation", required=True)
    dsr = kinds.add_parser(
        "dsr", help="defense success rate per scene with Wilson 95%% intervals",
        description="Generate a response to every sample of a JSONL evaluation set (see tga_fast/evaluation/data.py "
        "for the format), judge refusals, and write result.json, samples.jsonl (per-sample responses and verdicts) "
        "and figure.png.",
    )
    add_model_and_data_options(dsr)
    add = dsr.add_argument
    add("--condition", choices=["image", "text"], default="image",
        help="image: the image before the question; text: the sample's text in its place")
    add_judge_flags(dsr)
    add("--max-new-tokens", dest="max_new_tokens", type=int, default=64)
    add("--do-sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
    add("--temperature", type=float, default=1.0, help="with --do-sample")
    add("--top-p", dest="top_p", type=float, default=1.0, help="with --do-sample")
    add("--seed", type=int, default=None, help="random seed (sampling)")
    dsr.set_defaults(run=run_eval_dsr)

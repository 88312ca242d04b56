"""``tga-fast eval dsr``: the DSR of a local checkpoint on a JSONL evaluation set (format: tga_fast.evaluation.data),
with intervals clustered by ``--cluster-by``; ``tga-fast eval compare``: two saved DSR results compared pair by pair
on the samples they share (tga_fast.evaluation.compare)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tga_fast.commands.judges import add_judge_flags
from tga_fast.commands.options import add_model_and_data_options, check_common, cli_settings, load_data

__all__ = ["add_eval", "run_eval_compare", "run_eval_dsr"]

logger = logging.getLogger("tga_fast.eval")


def run_eval_dsr(args: argparse.Namespace) -> int:
    """Loads the model and data, evaluates, writes ``result.json``, ``samples.jsonl`` and ``figure.png`` (user
    errors: ``tga_fast.cli``)."""
    from tga_fast.errors import UserError, require_positive
    from tga_fast.commands.judges import judges_from_args, print_agreement, write_judge_outputs
    from tga_fast.evaluation.dsr import evaluate_dsr
    from tga_fast.models.loading import load_model
    from tga_fast.sharding import parse_shard

    # Arguments, output and data first: a mistake fails in a second, before minutes of model loading.
    shard = parse_shard(getattr(args, "shard", None))
    if shard is not None:  # each shard writes its own result folder beside --out; `tga-fast merge` joins them
        args.out = str(shard.part_folder(args.out))
    check_common(args)
    require_positive(args.max_new_tokens, "--max-new-tokens")
    data = load_data(args, logger, require_images=args.condition == "image")
    samples, shard_settings = data.samples, {}
    if shard is not None:
        samples = list(shard.select(data.samples))
        if not samples:
            raise UserError(f"--shard {shard}: the data has only {len(data.samples)} valid samples, so this shard "
                            f"has none (use at most {len(data.samples)} shards)")
        # What `tga-fast merge` needs to put every sample back in place and check that none is lost or repeated.
        shard_settings = {"shard": {**shard.to_json(), "total": len(data.samples), "ids": [s.id for s in samples]}}
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
        model, processor, samples, condition=args.condition, with_retrieved=args.with_retrieved,
        system_prompt=args.system_prompt, judge=judge, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, generation_kwargs=generation_kwargs, progress=not args.no_progress,
        settings={**cli_settings(args, data), "seed": args.seed, **shard_settings}, cluster_by=args.cluster_by,
        extra_judges=extra_judges,
    )
    out = result.save(args.out, overwrite=args.overwrite)
    write_judge_outputs(out, result, [judge, *extra_judges])
    print(result.summary())
    print_agreement(result, [judge, *extra_judges])
    print(f"wrote {out / 'result.json'}, {out / 'samples.jsonl'} and {out / 'figure.png'}")
    return 0


def run_eval_compare(args: argparse.Namespace) -> int:
    """Loads two saved DSR results, compares them on their shared samples, prints the verdict and writes
    ``result.json``, ``samples.jsonl`` (paired verdicts) and ``figure.png`` (user errors: ``tga_fast.cli``)."""
    from tga_fast.errors import UserError
    from tga_fast.evaluation.compare import compare_dsr
    from tga_fast.evaluation.dsr import DSRResult
    from tga_fast.files.atomic import check_writable
    from tga_fast.results import FIGURE_FILE, RESULT_FILE, SAMPLES_FILE

    # --out first, as check_common does for dsr: a result in the way fails before any reading.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    check_writable(out / RESULT_FILE, overwrite=args.overwrite)
    results = []
    for path in (args.a, args.b):
        try:
            results.append(DSRResult.load(path))
        except (ValueError, TypeError, KeyError) as error:  # another result kind, or a hand-edited file
            raise UserError(f"{path} is not a DSR result: {error}") from None
    comparison = compare_dsr(*results, cluster_by=args.cluster_by, names=(str(args.a), str(args.b)))
    out = comparison.save(out, overwrite=args.overwrite)
    print(comparison.summary())
    print(f"wrote {out / RESULT_FILE}, {out / SAMPLES_FILE} and {out / FIGURE_FILE}")
    return 0


def add_eval(commands) -> None:
    """Adds ``eval`` (with the ``dsr`` and ``compare`` subcommands) to the CLI's subparsers."""
    evaluate = commands.add_parser("eval", help="evaluations of a checkpoint (dsr: defense success rate; compare: "
                                   "two DSR results on shared samples)")
    kinds = evaluate.add_subparsers(dest="evaluation", required=True)
    dsr = kinds.add_parser(
        "dsr", help="defense success rate per scene with 95%% intervals clustered by --cluster-by",
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
    add("--shard", default=None, metavar="K/N",
        help="this process's share of a data-parallel run: samples K, K+N, K+2N, ... (K 0-based) into the folder "
        "<out>.part-K-of-N; join the N parts with `tga-fast merge`")
    dsr.set_defaults(run=run_eval_dsr)
    _add_compare(kinds)


def _add_compare(kinds) -> None:
    """``eval compare A B --out DIR [--overwrite] [--cluster-by FIELD]``."""
    compare = kinds.add_parser(
        "compare", help="paired comparison of two DSR results on their shared samples (McNemar, clustered interval)",
        description="Match the samples of two saved DSR results by id and compare their verdicts pair by pair: "
        "the exact McNemar test and a paired cluster-bootstrap interval of B - A, overall and per scene (Holm over "
        "scenes), and false refusals when both have benign samples. Ids in one result only are counted and listed. "
        "Prints a one-sentence verdict and writes result.json, samples.jsonl (paired verdicts) and figure.png.",
    )
    add = compare.add_argument
    add("a", help="result A (the baseline): a result folder of `eval dsr` or its result.json")
    add("b", help="result B (compared with A): a result folder or its result.json")
    add("--out", required=True, help="output folder for result.json, samples.jsonl and figure.png")
    add("--overwrite", action="store_true", help="replace the result already in --out")
    add("--cluster-by", dest="cluster_by", choices=["concept", "scene", "text", "image", "prompt", "id"],
        default=None, help="what the intervals are clustered by (default: the records' own labels, the field the "
        "runs chose; scene or id can always be made from the records, another field only if the runs used it)")
    compare.set_defaults(run=run_eval_compare)

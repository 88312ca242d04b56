"""``tga-fast analyze <analysis>``: one of the paper's five analyses on a local checkpoint and a JSONL evaluation
set (format: tga_fast.evaluation.data); writes ``result.json``, ``samples.jsonl`` and ``figure.png``.

One subcommand per entry of :mod:`tga_fast.analysis.registry`, its flags made from the analysis' options
dataclass, and one handler for all of them."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from tga_fast.commands.options import add_model_and_data_options, check_common, cli_settings, load_data

__all__ = ["add_analyze", "add_options", "run_analyze"]

logger = logging.getLogger("tga_fast.analyze")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, options: type) -> None:
    """One flag per field of the options dataclass ``options`` (``window`` -> ``--window``), typed by its
    default, with the field's help and choices (:func:`tga_fast.analysis.options.option`)."""
    for field in dataclasses.fields(options):
        meta, default = field.metadata, field.default
        kwargs = {"dest": field.name, "default": default, "help": meta.get("help")}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("many"):
            kwargs["nargs"] = "+"
        elif isinstance(default, bool):
            kwargs = {"dest": field.name, "action": "store_true", "help": meta.get("help")}
        elif default is not None:
            kwargs["type"] = type(default)
        if kwargs.get("help") and default is not None and not isinstance(default, bool):
            kwargs["help"] += f" (default: {' '.join(default) if isinstance(default, tuple) else default})"
        parser.add_argument(_flag(field.name), **kwargs)


def _options_of(args: argparse.Namespace, options: type):
    """The options dataclass from the parsed flags; a flag that must be a whole number >= 1 is checked here."""
    from tga_fast.errors import require_positive

    values = {}
    for field in dataclasses.fields(options):
        value = getattr(args, field.name)
        if field.metadata.get("positive"):
            require_positive(value, _flag(field.name))
        values[field.name] = tuple(value) if field.metadata.get("many") else value
    return options(**values)


def run_analyze(args: argparse.Namespace) -> int:
    """Checks the arguments and output, loads the data and the model, runs the analysis, saves (user errors:
    ``tga_fast.cli``)."""
    from tga_fast.analysis.registry import ANALYSES, run_analysis
    from tga_fast.models.loading import load_model

    entry = ANALYSES[args.analysis]
    # Arguments, output and data first: a mistake fails in a second, before minutes of model loading.
    options = _options_of(args, entry.options)
    check_common(args)
    data = load_data(args, logger, require_images=options.needs_images())
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization)
    result = run_analysis(entry.name, model, processor, data.samples, options, batch_size=args.batch_size,
                          progress=not args.no_progress, with_retrieved=args.with_retrieved,
                          system_prompt=args.system_prompt, cluster_by=args.cluster_by)
    result.settings.update(cli_settings(args, data))
    out = result.save(args.out, overwrite=args.overwrite)
    skipped = f"; {len(result.skipped)} samples skipped (see result.json)" if result.skipped else ""
    print(f"wrote {out / 'result.json'}, {out / 'samples.jsonl'} and {out / 'figure.png'}{skipped}")
    return 0


def add_analyze(commands) -> None:
    """Adds ``analyze`` and one subcommand per registered analysis to the CLI's subparsers."""
    from tga_fast.analysis.registry import ANALYSES

    parser = commands.add_parser(
        "analyze", help="the paper's analyses: safety layers, attention share, knockout, similarity, steering",
        description="Run one analysis of METHOD.md section 3 on a local HF checkpoint and a JSONL evaluation set "
        "(see tga_fast/evaluation/data.py for the format); writes result.json, samples.jsonl and figure.png into "
        "--out.",
    )
    analyses = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for entry in ANALYSES.values():
        sub = analyses.add_parser(entry.name, help=entry.summary, description=entry.summary)
        add_model_and_data_options(sub)
        add_options(sub, entry.options)
        sub.set_defaults(run=run_analyze)

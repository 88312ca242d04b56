"""``tga-fast train``: one-process TGA training (multi-GPU: the deepspeed or torchrun launchers, see docs/training.md).

The options are the four config dataclasses' (``tga_fast.training.config``), parsed by ``HfArgumentParser``;
``tga-fast train --help`` lists them. A first argument ending in .json/.yaml/.yml is a preset:

    tga-fast train configs/stage1_pretrain.json --model_name_or_path llava-1.5-7b --data_path caps.jsonl \\
        --output_dir out/stage1
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from tga_fast.training.train import main

    main(args.options)
    return 0


def add_train(commands) -> None:
    """Adds ``train`` to the ``tga-fast`` subcommands; everything after it goes to ``HfArgumentParser``."""
    train = commands.add_parser(
        "train",
        help="TGA training on one process (a preset file first, then options); multi-GPU: see docs/training.md",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # --help goes to HfArgumentParser, which knows the options
        prefix_chars="\x00",  # so that every --option after `train` is passed through, not parsed here
    )
    train.add_argument("options", nargs=argparse.REMAINDER, help="[preset.json|.yaml] --option value ...")
    train.set_defaults(run=_train)

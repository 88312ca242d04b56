"""``tga-fast demo``: the miniature world, end to end (see ``tga_fast.toy.demo``)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from tga_fast.errors import UserError, require_positive

    # Checked here, before minutes of training: a seed numpy rejects deep inside, or a thread count of 0.
    require_positive(args.threads, "--threads")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    from tga_fast.toy.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, cache=args.cache, threads=args.threads)
    print(f"wrote {args.out}/report.md, result.json and figures in {result['timings']['total']:.0f} s")
    for row in result["targets"]:
        print(f"  [{'x' if row['met'] else ' '}] {row['target']}: {row['measured']}")
    return 0


def add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the miniature world: the paper's analyses and both alignments, measured end to end on a CPU",
        description="Trains (or loads from the cache) a text LLM with a safety mechanism, a CLIP-like vision encoder, "
        "and the baseline and TGA alignments of the LLaVA built from them, then measures DSR, accuracy and the "
        "paper's layer analyses; writes report.md, result.json and PNG figures.",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="the small world used by the tests (about a minute)")
    demo.add_argument("--cache", default=None, help="trained-model cache folder (default <out>/cache)")
    demo.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: the world's matrices are tiny, so a second thread gains little, and on a "
        "machine busy with other jobs OpenMP threads that wait for a core slow training down a hundredfold)",
    )
    demo.set_defaults(run=_run)

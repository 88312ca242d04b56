"""``tga-fast <command>``: parse the command's options and call one library function."""

from __future__ import annotations

import argparse
import sys


def _env(args: argparse.Namespace) -> int:
    from tga_fast.diagnostics import report

    print(report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tga_fast.diagnostics import report
    from tga_fast.quickstart import QuickstartConfig, run_quickstart

    print(report(), end="\n\n")
    run_quickstart(QuickstartConfig(steps=args.steps, seed=args.seed, out=args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tga-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="versions, settings and which kernel serves each op").set_defaults(run=_env)
    demo = commands.add_parser("demo", help="env, then the alignment loss trained end to end on a toy model")
    demo.add_argument("--steps", type=int, default=200, help="optimisation steps of the toy projector")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="folder for result.json and cosines.png (optional)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())

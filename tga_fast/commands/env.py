"""``tga-fast env``: versions, settings and which kernel serves each op on each device."""

from __future__ import annotations

import argparse


def _env(args: argparse.Namespace) -> int:
    from tga_fast.diagnostics import report

    print(report())
    return 0


def add_env(commands) -> None:
    commands.add_parser("env", help="versions, settings and which kernel serves each op").set_defaults(run=_env)

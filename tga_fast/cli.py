"""``tga-fast <command>``: parse the command's options and call one library function.

Every user error (a bad argument, path, data file or model folder: :class:`tga_fast.errors.UserError`,
``ValueError``, ``FileNotFoundError``, ``FileExistsError``) is one line on stderr and exit code 2; ``-v`` shows the
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

# Each command module only declares its options; the heavy imports happen inside its handler.
from tga_fast.commands.analyze import add_analyze
from tga_fast.commands.build_lvlm import add_build_lvlm
from tga_fast.commands.demo import add_demo
from tga_fast.commands.env import add_env
from tga_fast.commands.evaluate import add_eval
from tga_fast.commands.merge import add_merge
from tga_fast.commands.retrieve import add_retrieve
from tga_fast.commands.train import add_train

__all__ = ["USER_ERRORS", "build_parser", "main"]

# What a user can fix; TypeError is left out on purpose: from the CLI it is a bug, not a bad argument.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tga-fast", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="tga_fast debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    add_env(commands)
    add_retrieve(commands)
    add_build_lvlm(commands)
    add_demo(commands)
    add_train(commands)
    add_analyze(commands)
    add_eval(commands)
    add_merge(commands)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    words = ["tga-fast", args.command] + [getattr(args, key) for key in ("evaluation", "analysis") if
                                          isinstance(getattr(args, key, None), str)]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # tga_fast's own debug lines, not every library's
        logging.getLogger("tga_fast").setLevel(logging.DEBUG)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if args.verbose:
            raise
        message = str(error).strip().splitlines() or [type(error).__name__]
        print(f"{_command_name(args)}: error: {message[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_command_name(args)}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

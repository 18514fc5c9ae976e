"""The ``attend`` command.

Usage errors exit 2 with one line; runtime errors exit 1 with one line (a traceback
only with ``--debug``); Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attend", description="attend: the attention mechanism, every variant behind one API.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for runtime errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser("demo", help="a terminal tour of attention variants on a small example")
    demo.add_argument("--seed", type=int, default=0, help="seed for the random parts (default 0)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "demo":
            from . import demo

            demo.run(sys.stdout, seed=args.seed)
        return 0
    except KeyboardInterrupt:
        print("attend: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # runtime error: one line unless --debug
        if args.debug:
            raise
        print(f"attend: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

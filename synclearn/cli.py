"""The ``synclearn`` console script: one thin dispatcher over the subcommands."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="synclearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the main job on the embedded defaults", add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from synclearn.run import main as run_main

        return run_main(rest)
    parser.error(f"unknown command {command!r}; expected one of: run")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

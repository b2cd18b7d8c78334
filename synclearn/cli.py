"""The ``synclearn`` console script: one thin dispatcher over the subcommands.

Each subcommand is ``"module:function"`` taking the remaining arguments and returning an exit
code; add one by adding a line to ``COMMANDS``. Modules are imported only when their command
runs, so ``synclearn --help`` stays fast.

``synclearn -v CMD`` logs at INFO (``-vv``: DEBUG), ``-q`` only errors (default: warnings);
modules log through ``logging.getLogger(__name__)``. A mistake (a
:class:`~synclearn.chat.compose.UsageError`: a bad flag or override, an unknown model, a busy
port, a checkpoint of another model) ends in one line on stderr and exit code 2; any other
error in one line and exit code 1. ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("synclearn.run:main", "run the main job on the embedded defaults (Hydra overrides, -m for sweeps)"),
    "pretrain": ("synclearn.learn.pretrain:cli_main", "train (or reuse from the cache) the chat base model"),
    "report": ("synclearn.eval.report:main", "aggregate a run or multirun directory into tables and plots"),
    "chat": ("synclearn.chat.commands:chat_main", "chat in the terminal (learn, feedback, forget, status, save)"),
    "serve": ("synclearn.chat.commands:serve_main", "OpenAI-compatible server with an attachable learner"),
    "attach": ("synclearn.chat.commands:attach_main", "attach a learner to a running server: synclearn attach URL"),
}


def log_level(verbosity: int) -> int:
    """-q (-1) -> ERROR, none (0) -> WARNING, -v (1) -> INFO, -vv (2+) -> DEBUG."""
    return {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 1
                                                                          else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="synclearn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug); tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    verbosity = 0
    while argv and argv[0] in ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"):
        flag = argv.pop(0)
        if flag in ("-q", "--quiet"):
            verbosity = -1
        else:
            verbosity += 1 if flag == "--verbose" else flag.count("v")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; expected one of: {', '.join(COMMANDS)}")
    logging.basicConfig(level=log_level(verbosity), format="%(levelname)s %(name)s: %(message)s", force=True)
    from synclearn.chat.compose import UsageError

    module, _, function = COMMANDS[command][0].partition(":")
    try:
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    except UsageError as err:
        if verbosity > 0:
            raise
        print(f"synclearn {command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # not a usage mistake: one line, the traceback with -v
        if verbosity > 0:
            raise
        print(f"synclearn {command}: error: {type(err).__name__}: {err} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

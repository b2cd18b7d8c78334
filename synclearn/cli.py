"""The ``synclearn`` console script: one thin dispatcher over the subcommands.

Each subcommand is ``"module:function"`` taking the remaining arguments and returning an exit
code; add one by adding a line to ``COMMANDS``. Modules are imported only when their command
runs, so ``synclearn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("synclearn.run:main", "run the main job on the embedded defaults (Hydra overrides, -m for sweeps)"),
    "pretrain": ("synclearn.learn.pretrain:cli_main", "train (or reuse from the cache) the chat base model"),
    "report": ("synclearn.eval.report:main", "aggregate a run or multirun directory into tables and plots"),
    "chat": ("synclearn.chat.commands:chat_main", "chat in the terminal (learn, feedback, forget, status, save)"),
    "serve": ("synclearn.chat.commands:serve_main", "OpenAI-compatible server with an attachable learner"),
    "attach": ("synclearn.chat.commands:attach_main", "attach a learner to a running server: synclearn attach URL"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="synclearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; expected one of: {', '.join(COMMANDS)}")
    module, _, function = COMMANDS[command][0].partition(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""``synclearn chat``, ``synclearn serve`` and ``synclearn attach``: argument parsing only.

    synclearn chat  [--model mcsd-tiny] [--data DIR] [--learn]
    synclearn serve [--model mcsd-tiny] [--data DIR] [--host 127.0.0.1] [--port 8000] [--api-key K] [--learn]
    synclearn attach URL [--api-key K] [--batch-size N] [--idle-replay] [--max-steps N] | --detach | --status

``DIR`` (default ``synclearn-data``) holds ``log.db`` and ``checkpoint/``; a later start on
the same directory continues from the last checkpoint. The API key may also come from the
``SYNCLEARN_API_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from synclearn.learn.learner import UPDATES

API_KEY_ENV = "SYNCLEARN_API_KEY"


def add_runtime_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="mcsd-tiny", help="a named size or a model directory (default mcsd-tiny)")
    ap.add_argument("--data", default="synclearn-data", help="folder of log.db and checkpoint/ (default synclearn-data)")
    ap.add_argument("--seed", type=int, default=0, help="initialization seed of a named size; the learner's seed")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    ap.add_argument("--update", choices=UPDATES, default="sparse", help="how the learner changes weights")
    ap.add_argument("--neuron-fraction", type=float, default=0.05, help="sparse budget per plastic layer")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default per update family)")
    ap.add_argument("--checkpoint-every", type=float, default=60.0,
                    help="seconds between checkpoints while weights change (0: only on exit and /save)")
    ap.add_argument("--log-sync", choices=("NORMAL", "FULL", "EXTRA"), default="NORMAL",
                    help="log fsync policy: NORMAL survives a killed process, FULL also power loss")


def open_runtime(args: argparse.Namespace) -> Any:
    from synclearn.chat.runtime import Runtime

    learner = {"update": args.update, "neuron_fraction": args.neuron_fraction}
    if args.lr is not None:
        learner["lr"] = args.lr
    return Runtime.open(args.model, args.data, seed=args.seed, device=args.device, learner=learner,
                        checkpoint_every_s=args.checkpoint_every, log_synchronous=args.log_sync)


def _exit_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def chat_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synclearn chat", description="Chat in the terminal; /help lists commands.")
    add_runtime_args(ap)
    ap.add_argument("--system", default=None, help="a system message opening the conversation")
    ap.add_argument("--max-tokens", type=int, default=128, help="longest answer in tokens")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--learn", action="store_true", help="attach the learner at start (/learn on)")
    args = ap.parse_args(argv)
    from synclearn.chat.terminal import run_terminal

    rt = open_runtime(args)
    _exit_on_sigterm()  # SystemExit runs the finally below: detach, checkpoint, close the log
    try:
        if args.learn:
            rt.attach()
        return run_terminal(rt, system=args.system, max_new_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=None)
    except KeyboardInterrupt:
        print()
        return 130
    finally:
        rt.close()


def serve_main(argv: list[str]) -> int:
    from synclearn.chat.server import ServerLimits

    d = ServerLimits()
    ap = argparse.ArgumentParser(prog="synclearn serve", description="An OpenAI-compatible server that learns.")
    add_runtime_args(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: a free one; the URL is printed)")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"require this Bearer key (or ${API_KEY_ENV})")
    ap.add_argument("--served-name", default=None, help="the model id clients use (default: --model)")
    ap.add_argument("--learn", action="store_true", help="attach the learner at start")
    ap.add_argument("--temperature", type=float, default=0.7, help="default when a request gives none")
    ap.add_argument("--top-p", type=float, default=1.0, help="default when a request gives none")
    for field, help_ in (("max_body_bytes", "largest request body"), ("max_prompt_tokens", "longest conversation"),
                         ("max_tokens", "largest max_tokens a request may ask"),
                         ("default_max_tokens", "max_tokens when a request gives none"),
                         ("max_sessions", "conversations whose state is kept (LRU)")):
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(d, field), help=help_)
    args = ap.parse_args(argv)
    from synclearn.chat.server import create_app, serve

    limits = ServerLimits(**{f: getattr(args, f) for f in ("max_body_bytes", "max_prompt_tokens", "max_tokens",
                                                            "default_max_tokens", "max_sessions")})
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without an API key; anyone who can reach it can use and "
              f"change the model (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    rt = open_runtime(args)
    try:
        app = create_app(rt, model_name=args.served_name or str(args.model), api_key=args.api_key, limits=limits,
                         temperature=args.temperature, top_p=args.top_p)
        if args.learn:
            rt.attach()
        name = args.served_name or str(args.model)
        serve(app, args.host, args.port,
              on_ready=lambda url: print(f"synclearn serving {name} on {url} (weight version {rt.version})",
                                         flush=True))
    finally:
        rt.close()  # already done by the app's shutdown; idempotent
    return 0


def attach_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="synclearn attach", description="Attach a learner to a running server.")
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"Bearer key (or ${API_KEY_ENV})")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--detach", action="store_true", help="detach the learner instead")
    what.add_argument("--status", action="store_true", help="only print the learner's status")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--replay-ratio", type=float, default=None)
    ap.add_argument("--idle-replay", action="store_true", help="keep learning from replay when nothing is new")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    args = ap.parse_args(argv)
    base = args.url.rstrip("/").removesuffix("/v1")
    if args.status:
        method, path, body = "GET", "/v1/learner/status", None
    elif args.detach:
        method, path, body = "POST", "/v1/learner/detach", {}
    else:
        body = {k: v for k, v in (("batch_size", args.batch_size), ("replay_ratio", args.replay_ratio),
                                  ("max_steps", args.max_steps)) if v is not None}
        if args.idle_replay:
            body["idle_replay"] = True
        method, path = "POST", "/v1/learner/attach"
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if args.api_key:
        request.add_header("Authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:
            print(json.dumps(json.loads(resp.read()), indent=2))
        return 0
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        print(f"synclearn attach: {base}{path} answered {err.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as err:
        print(f"synclearn attach: cannot reach {base}: {getattr(err, 'reason', err)}", file=sys.stderr)
        return 1

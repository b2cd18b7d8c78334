"""``synclearn chat``, ``synclearn serve`` and ``synclearn attach``: argument parsing only.

    synclearn chat  [--model mcsd-chat] [--data DIR] [--learn] [OVERRIDE ...]
    synclearn serve [--model mcsd-chat] [--data DIR] [--host 127.0.0.1] [--port 8000] [--api-key K] [--learn]
                    [OVERRIDE ...]
    synclearn attach URL [--api-key K] [--batch-size N] [--idle-replay] [--max-steps N] | --detach | --status

``chat`` and ``serve`` compose ``conf/chat.yaml`` (the model, learner, memory, replay and
serve groups of ``synclearn run``); each flag is a shorthand for an override (``--model DIR`` is
``model=checkpoint model.name_or_path=DIR``, ``--lr 1e-3`` is ``learner.lr=1e-3``, ...), and any
Hydra override may follow (``learner=lora``, ``memory=replay``, ``serve.temperature=0``).
``DIR`` (default ``synclearn-data``) holds ``log.db``, ``checkpoint/`` and ``journal/``; a later
start on the same directory continues from the last checkpoint. The API key may also come
from the ``SYNCLEARN_API_KEY`` environment variable. Mistakes raise
:class:`~synclearn.chat.compose.UsageError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from synclearn.chat.compose import UsageError, compose_app, model_overrides, quote_value
from synclearn.options import AttachOptions, add_arguments, given

API_KEY_ENV = "SYNCLEARN_API_KEY"
ADMIN_KEY_ENV = "SYNCLEARN_ADMIN_KEY"
LIMITS = (("max_body_bytes", "largest request body"), ("max_prompt_tokens", "longest conversation"),
          ("max_tokens", "largest max_tokens a request may ask"),
          ("default_max_tokens", "max_tokens when a request gives none"),
          ("max_sessions", "conversations whose state is kept (LRU)"))
logger = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are a :class:`UsageError` (one line), not usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


# shorthand flag -> the override it stands for (None: handled in overrides_from)
SHORTHANDS = {"data": "data", "seed": "seed", "device": "device", "update": "learner",
              "neuron_fraction": "learner.neuron_fraction", "lr": "learner.lr", "learn": "learn",
              "max_tokens": "serve.max_new_tokens", "temperature": "serve.temperature", "top_p": "serve.top_p",
              "sparse_decode": "serve.sparse_decode", "sparse_mode": "serve.sparse_mode",
              "compile_decode": "serve.compile_decode",
              "checkpoint_every": "checkpoint_every_s", "log_sync": "log_sync", "system": "system",
              "host": "server.host", "port": "server.port", "api_key": "server.api_key",
              "served_name": "server.served_name", "admin_key": "server.admin_key"}


def add_runtime_args(ap: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # a flag not given adds no override: conf/chat.yaml decides
    ap.add_argument("--model", default=S, help="a model name (mcsd-chat: the pretrained chat base, the default; "
                    "<size>-random: a fresh initialization) or a model directory")
    ap.add_argument("--data", default=S, help="folder of log.db and checkpoint/ (default synclearn-data)")
    ap.add_argument("--seed", type=int, default=S, help="initialization seed of a random model; the learner's seed")
    ap.add_argument("--device", default=S, help="cpu, cuda, ... (default: cpu)")
    ap.add_argument("--update", choices=("sparse", "lora", "full"), default=S,
                    help="how the learner changes weights (the learner group)")
    ap.add_argument("--neuron-fraction", type=float, default=S, help="sparse budget per plastic layer")
    ap.add_argument("--lr", type=float, default=S, help="learning rate")
    ap.add_argument("--learn", action=argparse.BooleanOptionalAction, default=S,
                    help="attach the learner at start (default: no)")
    ap.add_argument("--temperature", type=float, default=S, help="sampling temperature (default 0.7)")
    ap.add_argument("--top-p", type=float, default=S, help="nucleus sampling mass (default 0.95)")
    ap.add_argument("--sparse-decode", type=float, default=S, metavar="SHARE",
                    help="decode with this share of each MLP's neurons, e.g. 0.1 (MCSD models; default: dense)")
    ap.add_argument("--sparse-mode", choices=("predictor", "topk"), default=S,
                    help="how sparse decode picks the neurons (default: predictor)")
    ap.add_argument("--compile-decode", action=argparse.BooleanOptionalAction, default=S,
                    help="torch.compile the decode step (needs a C++ compiler)")
    ap.add_argument("--checkpoint-every", type=float, default=S,
                    help="seconds between checkpoints while weights change (0: only on exit and save)")
    ap.add_argument("--log-sync", choices=("NORMAL", "FULL", "EXTRA"), default=S,
                    help="log fsync policy: NORMAL survives a killed process, FULL also power loss")
    ap.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                    help="Hydra overrides of conf/chat.yaml, e.g. learner=lora memory=replay serve.temperature=0")


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides the given flags stand for, then the explicit ones (which win)."""
    out = model_overrides(args.model) if hasattr(args, "model") else []
    for flag, key in SHORTHANDS.items():
        if not hasattr(args, flag):
            continue
        value = getattr(args, flag)
        if isinstance(value, bool):
            text = str(value).lower()
        elif value is None:
            text = "null"
        else:
            text = quote_value(str(value))
        out.append(f"{key}={text}")
    for field, _ in LIMITS:
        if hasattr(args, field):
            out.append(f"++server.limits.{field}={getattr(args, field)}")
    return out + list(args.overrides)


def _exit_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def start_runtime(cfg: Any) -> Any:
    """The runtime ``cfg`` describes, with the serving thread's torch threads set."""
    from synclearn.chat.compose import open_runtime

    if cfg.serve.serve_threads:
        import torch

        torch.set_num_threads(cfg.serve.serve_threads)
    return open_runtime(cfg)


def chat_main(argv: list[str]) -> int:
    ap = Parser(prog="synclearn chat", description="Chat in the terminal; /help lists commands.")
    add_runtime_args(ap)
    ap.add_argument("--system", default=argparse.SUPPRESS, help="a system message opening the conversation")
    ap.add_argument("--max-tokens", type=int, default=argparse.SUPPRESS, help="longest answer in tokens (default 128)")
    args = ap.parse_args(argv)
    from synclearn.chat.terminal import run_terminal

    cfg = compose_app(overrides_from(args))
    rt = start_runtime(cfg)
    _exit_on_sigterm()  # SystemExit runs the finally below: detach, checkpoint, close the log
    try:
        if cfg.learn:
            rt.attach()
        return run_terminal(rt, system=cfg.system, seed=None)
    except KeyboardInterrupt:
        print()
        return 130
    finally:
        rt.close()


def check_port_free(host: str, port: int) -> None:
    """Refuse a busy port before the model is loaded (the server binds it again later)."""
    import socket

    if port == 0:
        return
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err} (another server? pick another "
                         "--port, or --port 0 for a free one)") from None
    finally:
        sock.close()


def serve_main(argv: list[str]) -> int:
    ap = Parser(prog="synclearn serve", description="An OpenAI-compatible server that learns.")
    add_runtime_args(ap)
    ap.add_argument("--host", default=argparse.SUPPRESS, help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=argparse.SUPPRESS, help="port (default 8000; 0: a free one)")
    ap.add_argument("--api-key", default=argparse.SUPPRESS, help=f"require this Bearer key (or ${API_KEY_ENV})")
    ap.add_argument("--admin-key", default=argparse.SUPPRESS,
                    help=f"the operator's key: forget across all sessions (or ${ADMIN_KEY_ENV}; without one, "
                         "only from loopback)")
    ap.add_argument("--served-name", default=argparse.SUPPRESS,
                    help="the model id clients use (default: the model's short name)")
    for field, help_ in LIMITS:
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=argparse.SUPPRESS, help=help_)
    args = ap.parse_args(argv)
    from synclearn.chat.compose import describe_checkpoint, describe_decode, describe_learner, short_name
    from synclearn.chat.asgi import serve
    from synclearn.chat.server import ServerLimits, create_app

    cfg = compose_app(overrides_from(args))
    server = cfg.server
    api_key = server.api_key or os.environ.get(API_KEY_ENV)
    admin_key = server.admin_key or os.environ.get(ADMIN_KEY_ENV)
    try:
        limits = ServerLimits(**server.limits)
    except (TypeError, ValueError) as err:
        raise UsageError(f"server.limits: {err}") from None
    check_port_free(server.host, server.port)
    if server.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("serving on %s without an API key; anyone who can reach it can use and change the model "
                       "(set --api-key or $%s)", server.host, API_KEY_ENV)
    rt = start_runtime(cfg)
    name = server.served_name or short_name(rt.base)
    try:  # SIGTERM/SIGINT: uvicorn shuts down gracefully (the app's shutdown closes the runtime)
        app = create_app(rt, model_name=name, api_key=api_key, admin_key=admin_key, limits=limits,
                         temperature=cfg.serve.temperature, top_p=cfg.serve.top_p)
        if cfg.learn:
            rt.attach()

        def ready(url: str) -> None:
            print(f"synclearn serving {name} on {url} (weight version {rt.version}) | data {rt.data_dir} | "
                  f"{describe_learner(rt)} | {describe_checkpoint(rt)} | {describe_decode(rt)} | a checkpoint is "
                  "written on shutdown "
                  "(Ctrl-C)", flush=True)

        try:
            serve(app, server.host, server.port, on_ready=ready)
        except OSError as err:
            raise UsageError(f"cannot listen on {server.host}:{server.port}: {err.strerror or err}") from None
    finally:
        rt.close()  # already done by the app's shutdown; idempotent
        if rt.last_checkpoint is not None:
            print(f"checkpoint #{rt.last_checkpoint['seq']} (weight version {rt.last_checkpoint['weight_version']}) "
                  f"in {rt.data_dir}", flush=True)
    return 0


def attach_main(argv: list[str]) -> int:
    ap = Parser(prog="synclearn attach", description="Attach a learner to a running server.")
    ap.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"Bearer key (or ${API_KEY_ENV})")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--detach", action="store_true", help="detach the learner instead")
    what.add_argument("--status", action="store_true", help="only print the learner's status")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    add_arguments(ap.add_argument_group("attach options (the server's defaults when not given)"), AttachOptions)
    args = ap.parse_args(argv)
    base = args.url.rstrip("/").removesuffix("/v1")
    if args.status:
        method, path, body = "GET", "/v1/learner/status", None
    elif args.detach:
        method, path, body = "POST", "/v1/learner/detach", {}
    else:
        method, path, body = "POST", "/v1/learner/attach", given(args, AttachOptions)
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

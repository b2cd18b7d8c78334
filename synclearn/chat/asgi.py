"""The server's ASGI layers (API key, body size limit) and running an app under uvicorn.

:func:`bind` opens the listening socket (so a busy port fails before the model loads),
:func:`serve` runs an app on it in the foreground, and :class:`RunningServer` runs one in a
background thread (tests, benchmarks, ``synclearn attach``'s own checks).
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from typing import Any, Callable

from fastapi import FastAPI

from synclearn.chat.openai_api import APIError

OPEN_PATHS = ("/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect")  # never need the key


def bearer_header(scope: dict) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == b"authorization"), None)


class BearerAuth:
    """Pure ASGI middleware: every route but :data:`OPEN_PATHS` and the page's files needs
    ``Authorization: Bearer <key>`` (one of ``keys``)."""

    def __init__(self, app: Any, keys: list[str]) -> None:
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not scope["path"].startswith("/web/"):
            given = bearer_header(scope)
            if given is None or not given.startswith(b"Bearer ") or \
                    not any(hmac.compare_digest(given[7:], k) for k in self.keys):
                code = "missing_api_key" if given is None else "invalid_api_key"
                err = APIError(401, "a valid API key is required: Authorization: Bearer <key>",
                               type="authentication_error", code=code)
                await err.response({"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware: a request body over ``limit`` bytes gets 413 before any route reads it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"request body over the limit of {self.limit} bytes", code="body_too_large")
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_large.response()(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await too_large.response()(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket (port 0: a free one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _config(app: FastAPI) -> Any:
    import uvicorn

    return uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10, lifespan="on")


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` in this thread until SIGINT/SIGTERM (then the app's shutdown runs)."""
    import uvicorn

    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(_config(app))
    if on_ready is not None:
        on_ready(url)
    server.run(sockets=[sock])


class RunningServer:
    """``app`` served by uvicorn on a background thread (for embedding and tests).

    Attributes:
        url: ``http://host:port``.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0) -> None:
        import uvicorn

        self._sock = bind(host, port)
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(_config(app))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="synclearn-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start within {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (runs the app's shutdown); waits up to ``timeout``."""
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the server at {self.url} did not stop within {timeout}s")
        self._sock.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

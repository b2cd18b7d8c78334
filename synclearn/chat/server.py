"""An OpenAI-compatible server over a :class:`~synclearn.chat.runtime.Runtime` (FastAPI + uvicorn).

Routes (the request bodies are pydantic models, so ``GET /openapi.json`` describes them and
``GET /docs`` renders that schema; /docs loads Swagger UI's script from its CDN, the schema
itself needs nothing from outside):

* ``GET /``: the dashboard, a page to chat with the model and watch the learner live
  (:mod:`synclearn.chat.web`).
* ``POST /v1/chat/completions``: the OpenAI schema, streaming (SSE) or not.
  ``system_fingerprint`` is ``"wv<N>"``, N the weight version of the last token (in a stream,
  each chunk carries the version current when it was sent; the last one, the last token's).
  Each response also carries ``synclearn: {session_id, interaction_id, versions, prefilled_tokens}``.
* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (never needs the key).
* ``POST /v1/learner/attach`` (body: optional attach options), ``POST /v1/learner/detach``,
  ``GET /v1/learner/status`` (also: sessions, the log's learned/pending rows, recent forgets).
* ``POST /v1/feedback``: ``{"interaction_id"?: int, "score"?: -1..1, "correction"?: str}``
  (default: the session's last answer).
* ``POST /v1/forget``: exactly one of ``{"session": true}``, ``{"match": str}``,
  ``{"ids": [int]}``, ``{"since"?: t, "until"?: t}``, plus ``"mode": "exact" | "approximate" |
  "auto"`` and ``"scope": "session" | "all"``; returns the ForgetReport.

Sessions: the ``X-Session-Id`` request header names the conversation (1-128 characters of
``A-Z a-z 0-9 . _ : -``); without it, a completion's OpenAI ``user`` field does (the official
client cannot send custom headers per call without ``extra_headers``, but it sends ``user``).
Without either, the server starts a new one; every response returns the id in its
``X-Session-Id`` header. Session ids are capabilities: feedback and forget act only on rows
logged under the caller's id, and other sessions' rows are reported as not found.
OpenAI clients resend the whole history: when a request's messages are the session's
conversation so far plus one new user message, only that message is fed (the model state
carries the rest); otherwise the session is reset and the given history is prefilled (it is
not logged again). Sessions live in an LRU table of ``max_sessions`` entries (an entry in use
is never evicted); an evicted session is rebuilt by the same prefill. Turns of one session
run one at a time.

Operator scope: ``"scope": "all"`` forgets across every session (the model's own replies
included). It is for the device's owner: a request with ``Authorization: Bearer
<admin key>`` when the server has an admin key, or, when the server has no key at all, a
request from the loopback interface. Everyone else gets 403.

Safe by default: binds 127.0.0.1; with an API key, every route but ``/health``, the page and
the schema needs ``Authorization: Bearer <key>`` (the admin key works too). Every bad request
(malformed JSON, wrong types, unknown model or route, missing or wrong key, body/prompt/
max_tokens over the limits) gets a 4xx with an OpenAI-style ``{"error": {"message", "type",
"param", "code"}}`` body and is rejected before any model call or log write.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from synclearn.chat.openai_api import (
    SESSION_HEADER,
    SESSION_ID,
    SESSION_ID_RULE,
    APIError,
    AttachRequest,
    ChatCompletionRequest,
    FeedbackRequest,
    ForgetRequest,
    ServerLimits,
    clean_text,
    split_messages,
    validation_error,
)
from synclearn.chat.asgi import BearerAuth, BodyLimit, RunningServer, bind, serve  # noqa: F401 (re-exported)
from synclearn.chat.runtime import Conflict, NotFound, Runtime
from synclearn.chat.sessions import SessionTable
from synclearn.memory import LogError, LogInputError, LogNotFoundError

WEB = Path(__file__).with_name("web")


def _session_id(header: str | None, *, required: bool, user: str | None = None) -> str:
    sid, where = (header, SESSION_HEADER) if header is not None else (user, "user")
    if sid is None:
        if required:
            raise APIError(400, f"this request needs the {SESSION_HEADER} header of the conversation",
                           param=SESSION_HEADER, code="missing_session")
        return uuid.uuid4().hex
    if not SESSION_ID.match(sid):
        raise APIError(400, f"{where} names the session and must be {SESSION_ID_RULE}", param=where,
                       code="invalid_value")
    return sid


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


SessionHeader = Annotated[str | None, Header(alias=SESSION_HEADER, description=(
    f"the conversation ({SESSION_ID_RULE}); a completion without it (and without `user`) starts a new one, "
    "returned in the response's X-Session-Id header"))]


def _finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason == "max_tokens" else "stop"


def create_app(runtime: Runtime, *, model_name: str | None = None, api_key: str | None = None,
               admin_key: str | None = None, limits: ServerLimits | None = None, temperature: float = 0.7,
               top_p: float = 1.0, close_runtime: bool = True) -> FastAPI:
    """The FastAPI app serving ``runtime``.

    Args:
        runtime: the model, log and learner to serve.
        model_name: the id clients put in ``model`` (default: the runtime's base name).
        api_key: when set, every route but /health, / and the schema needs
            ``Authorization: Bearer <api_key>`` (or the admin key).
        admin_key: the operator's key: forget across all sessions (``scope: "all"``). Without
            any key, loopback clients are the operator.
        limits: request limits. temperature, top_p: defaults when a request gives none.
        close_runtime: close the runtime (detach, final checkpoint, close the log) on shutdown.
    """
    limits = limits or ServerLimits()
    name = model_name or runtime.base
    created = int(time.time())
    sessions = SessionTable(runtime, limits.max_sessions)
    tok = runtime.model.tokenizer
    forgets: deque[dict] = deque(maxlen=20)  # recent forget summaries, for the status and the page

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if close_runtime:
            await run_in_threadpool(runtime.close)

    app = FastAPI(title="synclearn", version="1", lifespan=lifespan, redoc_url=None, description=(
        "An OpenAI-compatible server whose model learns from its own use. `GET /` is a page to chat with it and "
        "watch the learner."))
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    keys = [k for k in (api_key, admin_key) if k]
    if keys:
        app.add_middleware(BearerAuth, keys=keys)
    app.state.runtime, app.state.sessions, app.state.limits = runtime, sessions, limits
    app.mount("/web", StaticFiles(directory=WEB), name="web")

    def is_operator(request: Request) -> bool:
        if admin_key:
            given = request.headers.get("authorization", "")
            return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), admin_key.encode())
        return not api_key and _is_loopback(request)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code=code).response()

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return validation_error(list(err.errors())).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").response()

    async def control(fn: Callable[[], Any]) -> Any:
        """Run a blocking runtime call, mapping its errors to 4xx."""
        try:
            return await run_in_threadpool(fn)
        except Conflict as err:
            raise APIError(409, str(err), code="conflict") from None
        except (NotFound, LogNotFoundError) as err:
            raise APIError(404, str(err).strip("'\""), code="not_found") from None
        except NotImplementedError as err:
            raise APIError(501, str(err), type="server_error", code="not_implemented") from None
        except (ValueError, LogInputError) as err:
            raise APIError(400, str(err), code="invalid_value") from None

    # -- info -------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness (never needs the key)")
    async def health() -> dict:
        return {"status": "ok"}

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "synclearn"}

    @app.get("/v1/models", summary="The served model")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", summary="One model by id")
    async def model(model_id: str) -> dict:
        if model_id != name:
            raise APIError(404, f"model {model_id!r} does not exist; this server serves {name!r}",
                           param="model", code="model_not_found")
        return model_card()

    # -- completions ------------------------------------------------------------------------------
    def validate(req: ChatCompletionRequest) -> tuple[str | None, list, str, dict, int]:
        if req.model != name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {name!r}",
                           param="model", code="model_not_found")
        for field in ("tools", "functions", "logprobs"):
            if getattr(req, field):
                raise APIError(400, f"{field} is not supported by this server", param=field, code="unsupported")
        system, history, text = split_messages(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {limits.max_tokens} "
                                f"(tokens of the model's tokenizer)", param="max_tokens", code="invalid_value")
        stop = req.stop
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if len(stops) > 4 or not all(stops):
                raise APIError(400, "stop must be up to 4 non-empty strings", param="stop", code="invalid_value")
            for i, piece in enumerate(stops):
                clean_text(piece, f"stop[{i}]")
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + history
        prompt_tokens = len(tok.chat(msgs + [{"role": "user", "content": text}]))
        if prompt_tokens > limits.max_prompt_tokens:
            raise APIError(400, f"the conversation has {prompt_tokens} tokens; this server's limit is "
                                f"{limits.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        sampling = {"max_new_tokens": max_tokens, "stop": stop, "seed": req.seed,
                    "temperature": temperature if req.temperature is None else req.temperature,
                    "top_p": top_p if req.top_p is None else req.top_p}
        return system, history, text, sampling, prompt_tokens

    def run_turn(sid: str, system: str | None, history: list, text: str, sampling: dict,
                 on_piece: Callable[[str], bool]) -> Any:
        """One turn of session ``sid`` (blocking); None when ``on_piece`` asked to stop."""
        runtime.load.enter()
        entry = sessions.get(sid)
        try:
            with entry.lock:
                chat = sessions.prepare(entry, system, history)
                pieces = chat.stream(text, **sampling)
                try:
                    for piece in pieces:
                        if not on_piece(piece):
                            return None  # closing the generator abandons the turn: nothing is logged
                finally:
                    pieces.close()
                return chat.last_reply
        finally:
            sessions.release(entry)
            runtime.load.leave()

    def extra(sid: str, reply: Any) -> dict:
        return {"session_id": sid, "interaction_id": reply.interaction_id, "versions": list(reply.versions),
                "prefilled_tokens": reply.prompt_tokens, "sparse": reply.sparse}

    def usage(prompt_tokens: int, reply: Any) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": reply.completion_tokens,
                "total_tokens": prompt_tokens + reply.completion_tokens}

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI schema), streaming or not")
    async def chat_completions(req: ChatCompletionRequest, x_session_id: SessionHeader = None) -> Any:
        sid = _session_id(x_session_id, required=False, user=req.user)
        system, history, text, sampling, prompt_tokens = validate(req)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {SESSION_HEADER: sid}
        if not req.stream:
            try:
                reply = await run_in_threadpool(run_turn, sid, system, history, text, sampling, lambda p: True)
            except LogError as err:
                raise APIError(500, f"the turn could not be logged: {err}", type="server_error") from None
            body = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": name,
                    "system_fingerprint": f"wv{reply.versions[1]}",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                                 "logprobs": None, "finish_reason": _finish_reason(reply.stop_reason)}],
                    "usage": usage(prompt_tokens, reply), "synclearn": extra(sid, reply)}
            return JSONResponse(body, headers=headers)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(stream(cid, sid, system, history, text, sampling, prompt_tokens, include_usage),
                                 media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})

    async def stream(cid: str, sid: str, system: str | None, history: list, text: str, sampling: dict,
                     prompt_tokens: int, include_usage: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (server stopped)
                cancel.set()

        def on_piece(piece: str) -> bool:
            if cancel.is_set():
                return False
            put(("piece", piece))
            return True

        def work() -> None:
            try:
                put(("done", run_turn(sid, system, history, text, sampling, on_piece)))
            except BaseException as err:  # reported to the client as an error event
                put(("error", err))

        def chunk(delta: dict, finish: str | None = None, version: int | None = None, **more: Any) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                    "system_fingerprint": f"wv{runtime.version if version is None else version}",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **more}
            return f"data: {json.dumps(body)}\n\n"

        threading.Thread(target=work, name="synclearn-turn", daemon=True).start()
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield chunk({"content": value})
                elif kind == "error":
                    err = APIError(500, f"{type(value).__name__}: {value}", type="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                else:
                    reply = value
                    if reply is None:
                        return
                    yield chunk({}, _finish_reason(reply.stop_reason), reply.versions[1], synclearn=extra(sid, reply))
                    if include_usage:
                        body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                                "model": name, "system_fingerprint": f"wv{reply.versions[1]}", "choices": [],
                                "usage": usage(prompt_tokens, reply)}
                        yield f"data: {json.dumps(body)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
        finally:
            cancel.set()  # a client that went away stops the turn at its next token

    # -- learner control --------------------------------------------------------------------------
    @app.post("/v1/learner/attach", summary="Start learning in the background (409 when attached)")
    async def attach(options: Annotated[AttachRequest | None, Body()] = None) -> dict:
        chosen = options.model_dump(exclude_none=True) if options is not None else {}
        return await control(lambda: runtime.attach(**chosen))

    @app.post("/v1/learner/detach", summary="Stop learning (idempotent)")
    async def detach() -> dict:
        return await control(runtime.detach)

    def full_status() -> dict:
        out = runtime.status()
        memory = getattr(runtime, "memory", None)  # the memory manager, when the runtime has one
        if "memory" not in out and callable(getattr(memory, "status", None)):
            out["memory"] = memory.status()  # per layer free / protected neurons, for the page
        pending = len(runtime.log.ids(learned=False))
        return {**out, "sessions": len(sessions), "log": {"rows": out["log_rows"], "learned": out["log_rows"] - pending,
                                                          "pending": pending},
                "recent_forgets": list(forgets)}

    @app.get("/v1/learner/status", summary="Weight version, learner steps and loss, log, recent forgets")
    async def status() -> dict:
        return await control(full_status)

    # -- feedback and forgetting ------------------------------------------------------------------
    @app.post("/v1/feedback", summary="Score or correct one of the session's answers")
    async def feedback(req: FeedbackRequest, x_session_id: SessionHeader = None) -> dict:
        sid = _session_id(x_session_id, required=True)
        if req.score is None and req.correction is None:
            raise APIError(400, "feedback needs a score, a correction, or both", param="score", code="invalid_value")
        if req.correction is not None:
            clean_text(req.correction, "correction")
        out = await control(lambda: runtime.feedback(sid, req.interaction_id, score=req.score,
                                                     correction=req.correction))
        return {"session_id": sid, **out}

    def remember(report: dict, scope: str, selector: str) -> None:
        forgets.appendleft({"at": time.time(), "scope": scope, "selector": selector, "mode": report.get("mode"),
                            "deleted": report.get("deleted"), "ids": len(report.get("ids") or []),
                            "version_after": report.get("version_after")})

    @app.post("/v1/forget", summary="Forget rows: out of the log and out of the weights")
    async def forget(req: ForgetRequest, request: Request, x_session_id: SessionHeader = None) -> dict:
        given = req.selectors()
        if len(given) != 1:
            raise APIError(400, f"forget needs exactly one of session, match, ids, since/until; got {given or 'none'}",
                           code="invalid_value")
        if req.match is not None:
            clean_text(req.match, "match")
        if req.since is not None and req.until is not None and not req.since < req.until:
            raise APIError(400, f"the time range is empty: since={req.since} >= until={req.until}", param="since",
                           code="invalid_value")
        if req.scope == "all":
            if not is_operator(request):
                raise APIError(403, "scope 'all' is for the device's owner: send the server's admin key "
                                    "(Authorization: Bearer <admin key>)", type="permission_error",
                               param="scope", code="forbidden")
            if req.session is not None:
                raise APIError(400, "session: true forgets one conversation; with scope 'all' use match, ids or "
                                    "since/until", param="session", code="invalid_value")

            def run_all() -> dict:
                report = runtime.forget_everywhere(ids=req.ids, match=req.match, since=req.since, until=req.until,
                                                   mode=req.mode)
                sessions.clear()  # every session's state may hold what was said
                return report

            report = await control(run_all)
            remember(report, "all", given[0])
            return report
        sid = _session_id(x_session_id, required=True)

        def run() -> dict:
            entry = sessions.get(sid)
            try:
                with entry.lock:  # not while this session's own turn is running
                    ids = req.ids
                    if given == ["since/until"]:
                        lo = float("-inf") if req.since is None else req.since
                        hi = float("inf") if req.until is None else req.until
                        ids = [r["id"] for r in runtime.log.by_session(sid) if lo <= r["created_at"] < hi]
                        if not ids:
                            return {"mode": "noop", "ids": [], "deleted": 0,
                                    "note": "nothing of this session in that time range; nothing changed"}
                    report = runtime.forget(sid, ids=ids, match=req.match, everything=bool(req.session),
                                            mode=req.mode)
                    sessions.drop(sid)  # its state still holds what was said
            finally:
                sessions.release(entry)
            return report

        report = await control(run)
        remember(report, "session", given[0])
        return {"session_id": sid, **report}

    return app

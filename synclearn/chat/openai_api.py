"""The OpenAI-style wire format of the server: request schemas, limits, errors, body reading.

Every check here runs before the server touches a session, the model or the log, so a bad
request changes nothing. Schemas are strict (no type coercion: ``"1"`` is not a number,
``1`` is not a boolean); unknown OpenAI fields are accepted and ignored in completions, and
rejected in synclearn's own control requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synclearn.chat.runtime import ATTACH_OPTIONS

# ---------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """A request the server refuses: HTTP status + OpenAI-style error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _validation_error(err: ValidationError) -> APIError:
    problems = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        problems.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    first = err.errors()[0]["loc"] if err.errors() else ()
    return APIError(400, "invalid request: " + "; ".join(problems), param=str(first[0]) if first else None,
                    code="invalid_value")


# ---------------------------------------------------------------------------------------- limits
@dataclass
class ServerLimits:
    """What one request may ask for.

    Attributes:
        max_body_bytes: largest request body.
        max_prompt_tokens: longest conversation (all messages, chat template included).
        max_tokens: largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when the request gives none.
        max_sessions: conversations whose state is kept (LRU).
    """

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_sessions: int = 64

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in self.__dict__.items() if not isinstance(v, int) or v < 1]
        if self.default_max_tokens > self.max_tokens:
            bad.append(f"default_max_tokens={self.default_max_tokens} > max_tokens={self.max_tokens}")
        if bad:
            raise ValueError("invalid server limits (expected positive integers): " + "; ".join(bad))


# ---------------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The fields this server honours; other OpenAI fields are accepted and ignored, except
    the ones that would silently change the meaning (tools, n > 1, logprobs)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    logprobs: bool | None = None
    tools: list | None = None
    functions: list | None = None


class AttachRequest(_Strict):
    batch_size: int = Field(4, ge=1, le=256)
    replay_ratio: float = Field(0.5, ge=0, le=1)
    idle_replay: bool = False
    max_steps: int | None = Field(None, ge=1)
    max_defer_s: float = Field(2.0, ge=0, le=3600)
    poll_s: float = Field(0.5, gt=0, le=60)
    learn_threads: int = Field(1, ge=1, le=256)
    idle_only: bool = True
    on_error: Literal["continue", "stop"] = "continue"
    seed: int | None = None


class FeedbackRequest(_Strict):
    interaction_id: int | None = None
    score: float | None = Field(None, ge=-1, le=1)
    correction: str | None = Field(None, min_length=1)


class ForgetRequest(_Strict):
    session: Literal[True] | None = None
    match: str | None = Field(None, min_length=1)
    ids: list[int] | None = Field(None, min_length=1)
    mode: Literal["exact", "approximate", "auto"] = "exact"


assert set(AttachRequest.model_fields) == set(ATTACH_OPTIONS)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, limit: int, *, empty_ok: bool = False) -> dict:
    """The request body as a JSON object, read at most ``limit`` bytes far."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
    if not body.strip() and empty_ok:
        return {}
    try:
        data = json.loads(bytes(body), parse_constant=_no_constants)
    except (ValueError, RecursionError) as err:
        raise APIError(400, f"malformed JSON body: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def parse(model: type[BaseModel], data: dict) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None


def clean_text(text: str, where: str) -> str:
    if "\x00" in text:
        raise APIError(400, f"{where} contains a NUL character", param="messages", code="invalid_value")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"{where} is not valid Unicode (lone surrogate)", param="messages",
                       code="invalid_value") from None
    return text


def split_messages(messages: list[Message]) -> tuple[str | None, list[dict[str, str]], str]:
    """``(system, history, new user text)``; history alternates user/assistant messages."""
    msgs = [(("system" if m.role == "developer" else m.role), clean_text(m.text(), f"messages[{i}].content"))
            for i, m in enumerate(messages)]
    system = None
    if msgs[0][0] == "system":
        system, msgs = msgs[0][1], msgs[1:]
    for i, (role, _) in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            at = i + (system is not None)
            raise APIError(400, f"messages[{at}] has role {role!r}; expected {want!r} (an optional first system "
                                f"message, then user and assistant alternating, ending with user)",
                           param="messages", code="invalid_value")
    if not msgs or msgs[-1][0] != "user":
        raise APIError(400, "the last message must be a user message", param="messages", code="invalid_value")
    history = [{"role": r, "content": c} for r, c in msgs[:-1]]
    return system, history, msgs[-1][1]

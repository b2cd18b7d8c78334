"""The OpenAI-style wire format of the server: request schemas, limits, errors.

The request bodies are pydantic models; FastAPI validates them and describes them in
``/openapi.json``. Every check here runs before the server touches a session, the model or
the log, so a bad request changes nothing. Schemas are strict (no type coercion: ``"1"`` is
not a number, ``1`` is not a boolean); unknown OpenAI fields are accepted and ignored in
completions, and rejected in synclearn's own control requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from synclearn.options import AttachOptions, pydantic_model

SESSION_HEADER = "X-Session-Id"
SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SESSION_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : -"

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


def validation_error(errors: list[dict]) -> APIError:
    """A 400 naming the first problems of a pydantic/FastAPI validation (``errors()`` list)."""
    problems, params = [], []
    for e in errors[:5]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "header", "query", "path")]
        problems.append(f"{'.'.join(loc)}: {e['msg']}" if loc else e["msg"])
        params.append(loc[0] if loc else None)
    if errors and errors[0].get("type") == "json_invalid":
        return APIError(400, f"malformed JSON body: {errors[0].get('ctx', {}).get('error', errors[0]['msg'])}",
                        code="invalid_json")
    return APIError(400, "invalid request: " + "; ".join(problems), param=params[0] if params else None,
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
    model: str = Field(description="the served model's id (GET /v1/models)")
    messages: list[Message] = Field(min_length=1, description=(
        "an optional first system (or developer) message, then user and assistant messages alternating, "
        "ending with a user message"))
    stream: bool = Field(False, description="server-sent events, one chunk per piece of text")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description=(
        "longest answer, in tokens of the model's own tokenizer (bytes for the byte-level tokenizer of the "
        "MCSD models); default and upper limit are the server's"))
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens (wins when both are given)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default: the server's")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stop: str | list[str] | None = Field(None, description="up to 4 non-empty strings that end the answer")
    seed: int | None = Field(None, description="sampling seed, for a reproducible answer")
    user: str | None = Field(None, description=(
        f"names the conversation (session) when no {SESSION_HEADER} header is given ({SESSION_ID_RULE})"))
    logprobs: bool | None = Field(None, description="not supported")
    tools: list | None = Field(None, description="not supported")
    functions: list | None = Field(None, description="not supported")


# The attach body: every AttachOptions field, each optional (omitted: the server's default).
AttachRequest = pydantic_model(AttachOptions, name="AttachRequest", optional=True)


class FeedbackRequest(_Strict):
    interaction_id: int | None = Field(None, description="one of the session's answers (default: its last)")
    score: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False, description="-1 (bad) .. 1 (good)")
    correction: str | None = Field(None, min_length=1, description="the answer it should have given; learned from")


class ForgetRequest(_Strict):
    """Exactly one selector: ``session``, ``match``, ``ids`` or a time range (``since`` and/or
    ``until``). ``scope="all"`` (the operator: admin key, or the local owner on loopback when
    the server has no key) selects across every session; otherwise only the caller's rows."""

    session: Literal[True] | None = Field(None, description="the whole conversation of the X-Session-Id")
    match: str | None = Field(None, min_length=1, description="rows whose prompt, answer or correction contain it")
    ids: list[int] | None = Field(None, min_length=1, description="interaction ids")
    since: float | None = Field(None, allow_inf_nan=False, description="rows logged at or after (Unix seconds)")
    until: float | None = Field(None, allow_inf_nan=False, description="rows logged before (Unix seconds)")
    scope: Literal["session", "all"] = Field("session", description="'all': every session (operator only)")
    mode: Literal["exact", "approximate", "auto"] = Field("exact", description=(
        "exact: bitwise the model that never learned the rows (needs the step journal); approximate: "
        "unlearning by gradient ascent; auto: exact when possible"))

    def selectors(self) -> list[str]:
        given = [k for k in ("session", "match", "ids") if getattr(self, k) is not None]
        return given + (["since/until"] if self.since is not None or self.until is not None else [])



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

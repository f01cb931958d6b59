"""The failure records that cross between the protocol edges and a replica (in-process, or a
Ray handle away): a `ReplicaError` carrying an `ErrorInfo`, the only error an edge turns into
a response. No torch here, and everything pickles as is.

`error_info` is the one mapping from what the engine side raises to what a client is told:
RequestError and pydantic validation errors are the client's (with the field), a store's
refusal is `store_error_info`'s, Overloaded means no capacity now, a dead engine is
unavailable, anything else a generic internal error whose traceback is logged with the
request id and never sent. Which status each kind gets is each protocol's own table
(serve/errors.py for OpenAI, serve/v2/protocol.py for v2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from models.errors import EngineDeadError, EngineStepError, Overloaded, RequestError
from stores.conversations import ConversationError, ConversationNotFound, TurnInProgress
from stores.voices import VoiceError, VoiceNotFound

log = logging.getLogger(__name__)
ErrorKind = Literal["invalid_request", "not_found", "conflict", "overloaded", "unavailable", "internal"]
INTERNAL_MESSAGE = "The server had an error while processing your request."


class ErrorInfo(BaseModel):
    """What a client is told about a failure; `message` is written for the client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None  # overloaded: when capacity is expected back (None: unknown)


class ReplicaError(Exception):
    """A failure as a typed record (never a traceback), raised by a replica and by the edges'
    request path; pickles as its record only (it crosses the Ray handle)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info

    def __reduce__(self):
        return ReplicaError, (self.info,)


class QueueTimeout(RuntimeError):
    """A stream waited for a row its own timeout long (Triton's `timeout` parameter)."""


@dataclass(frozen=True)
class FirstError:
    """A validation error's first complaint: the field's dotted path (None: the value as a
    whole), pydantic's message and its error type."""

    param: str | None
    message: str
    type: str


def first_error(exc: ValidationError, skip: tuple[str, ...] = (), drop: int = 0) -> FirstError:
    """The first complaint of `exc` (the one way every edge reads a pydantic error), its path
    without its first `drop` parts and the parts named in `skip` (FastAPI's "body", ...)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    parts = [str(p) for p in tuple(first.get("loc", ()))[drop:] if p not in skip]
    return FirstError(".".join(parts) or None, first.get("msg", "invalid request"), first.get("type", ""))


def store_error_info(exc: BaseException, path_param: str | None = None) -> ErrorInfo | None:
    """A store's refusal (stores/) as a client is told it, or None for anything else. A
    missing voice or conversation named by a resource path (`path_param`: its id's name) is
    not found; named in a request's fields, an unknown conversation is not found and an
    unknown voice a bad value of `voice`."""
    if isinstance(exc, ConversationNotFound):
        return ErrorInfo(kind="not_found", message=str(exc), param=path_param or "conversation",
                         code="conversation_not_found")
    if isinstance(exc, TurnInProgress):
        return ErrorInfo(kind="conflict", message=str(exc), param=path_param or "conversation", code="turn_in_progress")
    if isinstance(exc, ConversationError):
        return ErrorInfo(kind="invalid_request", message=exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, VoiceNotFound):
        return ErrorInfo(kind="not_found" if path_param else "invalid_request", message=str(exc),
                         param=path_param or "voice", code="voice_not_found")
    if isinstance(exc, VoiceError):
        return ErrorInfo(kind="invalid_request", message=str(exc), param=exc.param, code="invalid_voice")
    return None


def error_info(exc: BaseException, request_id: str) -> ErrorInfo:
    """Classify an exception raised while serving `request_id` (see the module docstring)."""
    if isinstance(exc, ReplicaError):
        return exc.info
    if isinstance(exc, RequestError):
        return ErrorInfo(kind="invalid_request", message=exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, ValidationError):
        first = first_error(exc)
        return ErrorInfo(kind="invalid_request", message=f"{first.param}: {first.message}" if first.param
                         else first.message, param=first.param, code="invalid_value")
    if (info := store_error_info(exc)) is not None:
        return info
    if isinstance(exc, Overloaded):
        return ErrorInfo(kind="overloaded", message="The server is at capacity; retry shortly.", code="overloaded",
                         retry_after_s=exc.retry_after_s)
    if isinstance(exc, QueueTimeout):  # Triton's words and kind (UNAVAILABLE) for a request's own timeout
        return ErrorInfo(kind="unavailable", message="Request timeout expired", code="timeout")
    if isinstance(exc, EngineDeadError):
        log.error("request %s: the engine is not running: %s", request_id, exc)
        return ErrorInfo(kind="unavailable", message="The speech engine is restarting; retry shortly.",
                         code="engine_unavailable")
    if isinstance(exc, EngineStepError):
        log.error("request %s: %s", request_id, exc)
    else:
        log.error("request %s failed", request_id, exc_info=exc)
    return ErrorInfo(kind="internal", message=INTERNAL_MESSAGE, code="internal_error")

"""The typed records that cross between the protocol edges and a replica (in-process, or a
Ray handle away): a `SpeechJob` in, float32 PCM chunks out, and on failure a `ReplicaError`
carrying an `ErrorInfo`, the only error an edge turns into a response. No torch here (the
edges import this), and everything pickles as is.

`error_info` is the one mapping from what the engine side raises to what a client is told:
RequestError and pydantic validation errors are the client's (with the field), Overloaded
means no capacity now, a dead engine is unavailable, anything else a generic internal error
whose traceback is logged with the request id and never sent. Which status each kind gets
is each protocol's own table (serve/errors.py for OpenAI, serve/v2/protocol.py for v2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import EngineDeadError, EngineStepError, Overloaded, RequestError
from models.params import EngineStats, GenerationParams, MaxAudioSeconds, Priority

from .admission import QueueTimeout
from .context_cache import ContextCacheStats
from .realtime import RealtimeInputs
from .conversation_store import ConversationError, ConversationNotFound, TurnInProgress
from .text_feed import TextFeed
from .voice_store import Voice

log = logging.getLogger(__name__)
ErrorKind = Literal["invalid_request", "not_found", "conflict", "overloaded", "unavailable", "internal"]
INTERNAL_MESSAGE = "The server had an error while processing your request."


class SpeechJob(BaseModel):
    """One speech request, as every replica receives it: `texts` are spoken in order in one
    voice, text i with `params.for_segment(i)`, the whole audio at most `max_audio_s` long.
    `priority` and `timeout_s` (the longest it may wait to start): replica/admission.py.
    With a `feed`, the texts after `texts` come from it as they arrive (replica/text_feed.py).
    With a `conversation`, the texts are its next turn: spoken after its earlier turns, and
    kept as a turn of it when the stream completes."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    request_id: str
    texts: tuple[str, ...] = Field(min_length=1)
    voice: Voice
    params: GenerationParams
    max_audio_s: MaxAudioSeconds | None = None
    priority: Priority = "interactive"
    timeout_s: float | None = Field(None, gt=0)
    feed: TextFeed | None = None  # more texts as they arrive, after `texts` (the text-in WebSocket)
    marks: bool = False  # yield a PieceDone after each text's audio (its text and timestamps)
    conversation: str | None = None  # speak the next turn of this conversation (replica/conversations.py)


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


def error_info(exc: BaseException, request_id: str) -> ErrorInfo:
    """Classify an exception raised while serving `request_id` (see the module docstring)."""
    if isinstance(exc, ReplicaError):
        return exc.info
    if isinstance(exc, RequestError):
        return ErrorInfo(kind="invalid_request", message=exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        return ErrorInfo(kind="invalid_request", message=f"{param}: {first['msg']}" if param else first["msg"],
                         param=param, code="invalid_value")
    if isinstance(exc, ConversationNotFound):
        return ErrorInfo(kind="not_found", message=str(exc), param="conversation", code="conversation_not_found")
    if isinstance(exc, TurnInProgress):
        return ErrorInfo(kind="conflict", message=str(exc), param="conversation", code="turn_in_progress")
    if isinstance(exc, ConversationError):
        return ErrorInfo(kind="invalid_request", message=exc.message, param=exc.param, code=exc.code)
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


class Instances(BaseModel):
    """Where the model runs, for Triton's model configuration: the kind of device (Triton's
    KIND_GPU also stands for an NPU card, KIND_CPU for a CPU engine), how many replicas (one
    per card), the rows each batches and the backbone positions a row holds (the context a
    conversation's turns must fit in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["KIND_GPU", "KIND_CPU"]
    count: int
    max_num_seqs: int
    max_positions: int = 2048


def instance_kind(device_type: str) -> Literal["KIND_GPU", "KIND_CPU"]:
    return "KIND_CPU" if device_type == "cpu" else "KIND_GPU"


@dataclass(frozen=True)
class ReplicaStats:
    """A snapshot of one replica, for tests, health and operators."""

    engine: EngineStats
    contexts: ContextCacheStats
    num_streams: int  # admitted speech streams (each holds a decoder row)
    num_waiting_streams: int  # streams waiting to start (batch ones for a row, interactive ones for a moment)
    streams: tuple[str, ...]  # request ids of the streams this replica is serving or holding
    voices: tuple[str, ...]  # ids of the voices whose context is cached here
    pid: int
    num_threads: int
    card: str  # the card Ray gave this process ("npu:3", "cuda:0") or "none"
    num_batch_streams: int = 0  # of num_streams, those of batch priority
    realtime_capacity: int = 0  # interactive streams this replica predicts it keeps real time (realtime.py)
    headroom: int = 0  # interactive streams that could start here now without waiting
    num_waiting_batch_streams: int = 0  # of num_waiting_streams, those of batch priority
    realtime: RealtimeInputs | None = None  # what the capacity is computed from (realtime.py)
    niceness: int = 0  # the engine thread's CPU niceness (deployments/priority.py)
    num_deferred_joins: int = 0  # texts that waited for the playing streams' slack before joining (joins.py)
    num_refused_streams: int = 0  # streams this replica's admission refused (Overloaded) so far
    node_id: str | None = None  # the Ray node (set by the Ray deployment)
    conversations: tuple[str, ...] = ()  # ids of the conversations whose context is cached here

"""The seam between the protocol edges and whatever runs the model (in-process, or a Ray
Serve engine deployment behind a handle). Typed both ways: a `SpeechJob` in, float32 PCM
chunks out, and on failure a `BackendError` carrying an `ErrorInfo`: the only error an edge
turns into a response. No torch here.

`error_info` is the one mapping from what the engine side raises to what a client is told:
RequestError and pydantic validation errors are the client's (400, with the field),
Overloaded is 429, a dead engine 503, anything else a generic internal error whose
traceback is logged with the request id and never sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from models.errors import EngineDeadError, EngineStepError, Overloaded, RequestError
from models.params import GenerationParams

from .voices import Voice

log = logging.getLogger(__name__)
ErrorKind = Literal["invalid_request", "not_found", "overloaded", "unavailable", "internal"]


class SpeechJob(BaseModel):
    """One speech request, as every backend receives it (pickled as is across Ray)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    segments: tuple[str, ...]
    voice: Voice
    params: GenerationParams


class ErrorInfo(BaseModel):
    """What a client is told about a failure; `message` is written for the client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None


class BackendError(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info

    def __reduce__(self):  # pickles as its record only (it crosses the Ray handle)
        return BackendError, (self.info,)


INTERNAL_MESSAGE = "The server had an error while processing your request."


def error_info(exc: BaseException, request_id: str) -> ErrorInfo:
    """Classify an exception raised while serving `request_id` (see the module docstring)."""
    if isinstance(exc, BackendError):
        return exc.info
    if isinstance(exc, RequestError):
        return ErrorInfo(kind="invalid_request", message=exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        return ErrorInfo(kind="invalid_request", message=f"{param}: {first['msg']}" if param else first["msg"],
                         param=param, code="invalid_value")
    if isinstance(exc, Overloaded):
        return ErrorInfo(kind="overloaded", message="The server is at capacity; retry shortly.", code="overloaded")
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
    KIND_GPU also stands for an NPU card, KIND_CPU for a CPU engine), how many engine
    replicas (one per card) and the rows each batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["KIND_GPU", "KIND_CPU"]
    count: int
    max_num_seqs: int


def instance_kind(device_type: str) -> Literal["KIND_GPU", "KIND_CPU"]:
    return "KIND_CPU" if device_type == "cpu" else "KIND_GPU"


class SpeechBackend(Protocol):
    async def is_ready(self) -> bool:
        """Model loaded, warmed up, and the engine answering."""

    def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        """Float32 24 kHz mono PCM chunks. Raises BackendError (before the first chunk for
        overload and unusable input)."""

    async def add_voice(self, voice: Voice, clips: list[tuple[np.ndarray, str]]) -> None:
        """Make a stored voice usable (encode its clips, cache its prompt); BackendError
        (invalid_request) when the model cannot take it."""

    async def remove_voice(self, voice: Voice) -> None: ...

    async def instances(self) -> Instances: ...

"""POST /v1/audio/speech/batch: 1-32 speech requests in one call, for bulk narration. The
shape is vLLM-Omni's (top-level fields are every item's defaults, an item's own fields win;
results in order with base64 audio and a status each), with this server's options and a
usage per item. Items run at `batch` priority, so they use spare rows and pause between
frames whenever interactive streams need the step, `batch_concurrency` at a time; one bad or
refused item fails alone. Bounded in items (32), in characters and in audio, all items
together (ServerSettings.batch_*)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.errors import ReplicaError, first_error
from models.params import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

from .audio import make_encoder
from .errors import api_error
from .options import AudioOutput, SpeechOptions, partial
from .schemas import MAX_INPUT_CHARS, SpeechRequest, Usage
from .settings import ServerSettings
from .speech import SpeechService

MAX_ITEMS = 32
# Fields only vLLM-Omni's models have; accepted from its clients and ignored, as on its socket.
OMNI_ONLY = frozenset({"task_type", "language", "ref_audio", "ref_text", "x_vector_only_mode", "max_new_tokens",
                       "initial_codec_chunk_frames", "request_id", "session_id"})
_NOT_PER_ITEM = ("priority", "conversation")  # always batch; a conversation's turns are spoken in order, not at once
_Options = partial("BatchOptions", SpeechOptions, AudioOutput, exclude=_NOT_PER_ITEM,
                   doc="Speech options and audio output: every item's defaults, or one item's overrides.")


def _drop_omni_only(data: object) -> object:
    return {k: v for k, v in data.items() if k not in OMNI_ONLY} if isinstance(data, dict) else data


class BatchItem(_Options):
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    instructions: str | None = Field(None, max_length=4096, description="accepted and ignored, as on /v1/audio/speech")

    _omni = model_validator(mode="before")(_drop_omni_only)


class BatchSpeechRequest(_Options):
    model: str | None = Field(None, min_length=1, max_length=128, description="default: the served model")
    # an item that is no BatchItem is kept as it came, and fails alone (its result says why)
    items: list[Annotated[BatchItem | dict[str, Any], Field(union_mode="left_to_right")]] = Field(
        min_length=1, max_length=MAX_ITEMS)
    instructions: str | None = Field(None, max_length=4096)

    _omni = model_validator(mode="before")(_drop_omni_only)

    def requests(self, default_model: str) -> list[SpeechRequest | ValidationError]:
        """Each item as the speech request it makes (its fields over the batch's, the batch's
        over /v1/audio/speech's defaults but `wav`, vLLM-Omni's), or why it cannot be one."""
        shared = {"voice": "alloy", "response_format": "wav",
                  **self.model_dump(exclude_unset=True, exclude={"items", "model", "instructions"})}
        out: list[SpeechRequest | ValidationError] = []
        for item in self.items:
            try:
                own = item if isinstance(item, BatchItem) else BatchItem.model_validate(item)
                fields = {**shared, **own.model_dump(exclude_unset=True, exclude={"instructions"})}
                out.append(SpeechRequest(model=self.model or default_model, priority="batch", **fields))
            except ValidationError as e:
                out.append(e)
        return out

    def num_chars(self) -> int:
        return sum(len(item.input) if isinstance(item, BatchItem) else len(str(item.get("input", "")))
                   for item in self.items)


class BatchItemResult(BaseModel):
    index: int
    status: Literal["success", "error"]
    audio_data: str | None = Field(None, description="base64 of the audio, in the item's response_format")
    media_type: str | None = None
    usage: Usage | None = Field(None, description="input_tokens: characters; output_tokens: 80 ms frames")
    audio_seconds: float | None = None
    error: str | None = Field(None, description="why the item failed (the others did not)")
    code: str | None = None
    param: str | None = None


class BatchSpeechResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["audio.speech.batch"] = "audio.speech.batch"
    results: list[BatchItemResult]
    total: int
    succeeded: int
    failed: int


class _Budget:
    """The batch's audio, all items together: an item that would pass it ends there."""

    def __init__(self, seconds: float) -> None:
        self.samples_left = round(seconds * SAMPLE_RATE_HZ)

    def take(self, samples: int) -> bool:
        self.samples_left -= samples
        return self.samples_left >= 0


async def run_batch(body: BatchSpeechRequest, speech: SpeechService, settings: ServerSettings,
                    request_id: str) -> BatchSpeechResponse:
    budget, gate = _Budget(settings.batch_max_audio_s), asyncio.Semaphore(settings.batch_concurrency)

    async def one(index: int, request: SpeechRequest | ValidationError) -> BatchItemResult:
        if isinstance(request, ValidationError):
            first = first_error(request)
            return BatchItemResult(index=index, status="error", error=first.message, code="invalid_value",
                                   param=f"items[{index}].{first.param}" if first.param else f"items[{index}]")
        async with gate:
            return await _speak(index, request, speech, settings, f"{request_id}-{index}", budget)

    results = await asyncio.gather(*(one(i, r) for i, r in enumerate(body.requests(settings.model_id))))
    succeeded = sum(r.status == "success" for r in results)
    return BatchSpeechResponse(id=f"batch_{uuid.uuid4().hex[:16]}", results=list(results), total=len(results),
                               succeeded=succeeded, failed=len(results) - succeeded)


async def _speak(index: int, request: SpeechRequest, speech: SpeechService, settings: ServerSettings,
                 item_id: str, budget: _Budget) -> BatchItemResult:
    def failed(message: str, code: str | None, param: str | None = None) -> BatchItemResult:
        return BatchItemResult(index=index, status="error", error=message, code=code, param=param)

    if budget.samples_left <= 0:
        return failed("the batch's audio limit was reached before this item", "batch_audio_limit")
    encoder = make_encoder(request.response_format, request.speed, request.sample_rate)
    try:
        stream = await speech.start(request, "openai-batch", item_id)
        parts = []
        async for chunk in stream.audio():
            if not budget.take(len(chunk)):
                await stream.aclose()
                return failed(f"the batch's audio reached its limit ({settings.batch_max_audio_s:g} s)",
                              "batch_audio_limit")
            parts.append(encoder.encode(chunk))
            stream.sent(len(chunk))
        parts.append(encoder.flush())
    except ReplicaError as e:
        error = api_error(e.info, item_id, settings.retry_after_s)
        return failed(error.message, error.code, error.param and f"items[{index}].{error.param}")
    frames = -(-stream.num_samples // SAMPLES_PER_FRAME)
    chars = len(request.input)
    return BatchItemResult(index=index, status="success", audio_data=base64.b64encode(b"".join(parts)).decode(),
                           media_type=encoder.content_type, audio_seconds=round(stream.num_samples / SAMPLE_RATE_HZ, 4),
                           usage=Usage(input_tokens=chars, output_tokens=frames, total_tokens=chars + frames))

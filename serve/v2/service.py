"""What both v2 edges (HTTP routes, gRPC servicer) call: the models this server offers (the ids
of GET /v1/models, one version each), readiness, and inference over the shared request path,
with Triton's statistics kept per model.

Statistics are this ingress process's view (a Ray deployment with several ingress replicas
reports per replica). Triton's fields, as measured here: `queue` is from the request to its
first audio (admission and the prompt's prefill), `compute_infer` from the first audio to the
last, `compute_input` the request's validation, `compute_output` the response's encoding
(HTTP). The engine batches every running request into each frame's step, so Triton's batch
counts have no analogue per request: `execution_count` equals `inference_count`, and the
engine's own batch sizes are in the `tts_engine_*` metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from models.params import SAMPLE_RATE_HZ

from ..audio import as_mono_float
from ..backend import BackendError, SpeechBackend
from ..metrics import INPUT_CHARS, MetricsSink, RequestTally, outcome_of
from ..settings import ServerSettings
from ..synthesis import start_speech
from ..voices import OPENAI_VOICES, VoiceNotFound, VoiceStore
from .protocol import VERSION, TextInference, V2Error, backend_error


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    @property
    def execution_count(self) -> int:
        return self.inference_count


@dataclass
class InferTiming:
    """One inference's clock (monotonic ns), kept by its edge: the request arrived at
    `start_ns`; validation took `input_ns`; `infer` sets the first and last audio; the edge adds
    the time it spent encoding responses. Recorded once, when the inference has succeeded, so
    every duration's count moves together (perf_analyzer requires it)."""

    start_ns: int
    input_ns: int = 0
    first_ns: int = 0
    end_ns: int = 0
    output_ns: int = 0


class V2Service:
    def __init__(self, backend: SpeechBackend, store: VoiceStore, settings: ServerSettings,
                 metrics: MetricsSink) -> None:
        self.backend, self.store, self.settings, self.metrics = backend, store, settings, metrics
        self.models = [settings.model_id, *settings.model_aliases]
        self.stats = {name: ModelStats() for name in self.models}

    def check_model(self, model: str, version: str | None = None) -> None:
        if model not in self.stats:
            raise V2Error(404, f"unknown model '{model}'; this server has: {', '.join(self.models)}")
        if version not in (None, "", VERSION):
            raise V2Error(404, f"unknown version '{version}' of model '{model}'; it has version {VERSION}")

    async def is_ready(self) -> bool:
        return await self.backend.is_ready()

    def record_success(self, model: str, timing: InferTiming) -> None:
        stats = self.stats[model]
        stats.success.add(time.monotonic_ns() - timing.start_ns)
        stats.queue.add(timing.first_ns - timing.start_ns)
        stats.compute_input.add(timing.input_ns)
        stats.compute_infer.add(timing.end_ns - timing.first_ns)
        stats.compute_output.add(timing.output_ns)
        stats.inference_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, model: str, timing: InferTiming) -> None:
        self.stats[model].fail.add(time.monotonic_ns() - timing.start_ns)

    async def infer(self, inference: TextInference, timing: InferTiming) -> AsyncIterator[np.ndarray]:
        """The audio as float32 chunks, cut at max_audio_seconds. Raises V2Error before the
        first chunk (bad voice, overload, ...) or, rarely, mid-stream (a failed engine), and
        records the failure; on success the edge calls `record_success` once its responses are
        out. Closing the iterator early aborts the generation."""
        speech = inference.speech
        voice_label = speech.voice_key if speech.voice_key in OPENAI_VOICES else "custom"
        tally = RequestTally(self.metrics, inference.protocol, "fp32", voice_label)
        self.metrics.inc(INPUT_CHARS, len(speech.input))
        try:
            started = await start_speech(speech, self.backend, self.store, self.settings, inference.request_id)
        except VoiceNotFound as e:
            error = V2Error(400, f"parameter voice: {e}")
        except BackendError as e:
            error = backend_error(e.info, inference.request_id, self.settings.retry_after_s)
        else:
            error = None
        if error is not None:
            self.record_failure(inference.model, timing)
            tally.done(outcome_of(error.status))
            raise error
        timing.first_ns = time.monotonic_ns()
        if started.first is not None:
            tally.first_audio()
        max_samples = round(speech.max_audio_seconds * SAMPLE_RATE_HZ) if speech.max_audio_seconds else None
        total, outcome = 0, "error"
        try:
            chunk = started.first
            while chunk is not None:
                if max_samples is not None:
                    chunk = chunk[: max_samples - total]
                total += len(chunk)
                yield as_mono_float(chunk)  # -1..1, as the OpenAI edge's encoders send it
                if max_samples is not None and total >= max_samples:
                    break
                chunk = await anext(started.rest, None)
            outcome = "ok"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except BackendError as e:
            raise backend_error(e.info, inference.request_id, self.settings.retry_after_s) from None
        finally:
            await started.rest.aclose()
            tally.done(outcome, total)
            timing.end_ns = time.monotonic_ns()
            if outcome != "ok":
                self.record_failure(inference.model, timing)

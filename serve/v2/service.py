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

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from models.params import SAMPLE_RATE_HZ

from ..audio import as_mono_float
from ..backend import BackendError, SpeechBackend
from ..settings import ServerSettings
from ..synthesis import start_speech
from ..voices import VoiceNotFound, VoiceStore
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


class V2Service:
    def __init__(self, backend: SpeechBackend, store: VoiceStore, settings: ServerSettings) -> None:
        self.backend, self.store, self.settings = backend, store, settings
        self.models = [settings.model_id, *settings.model_aliases]
        self.stats = {name: ModelStats() for name in self.models}

    def check_model(self, model: str, version: str | None = None) -> None:
        if model not in self.stats:
            raise V2Error(404, f"unknown model '{model}'; this server has: {', '.join(self.models)}")
        if version not in (None, "", VERSION):
            raise V2Error(404, f"unknown version '{version}' of model '{model}'; it has version {VERSION}")

    async def is_ready(self) -> bool:
        return await self.backend.is_ready()

    def record_input(self, model: str, ns: int) -> None:
        if model in self.stats:
            self.stats[model].compute_input.add(ns)

    def record_output(self, model: str, ns: int) -> None:
        self.stats[model].compute_output.add(ns)

    async def infer(self, inference: TextInference) -> AsyncIterator[np.ndarray]:
        """The audio as float32 chunks, cut at max_audio_seconds. Raises V2Error before the
        first chunk (bad voice, overload, ...) or, rarely, mid-stream (a failed engine).
        Closing the iterator early aborts the generation."""
        stats, t0 = self.stats[inference.model], time.monotonic_ns()
        speech = inference.speech
        try:
            started = await start_speech(speech, self.backend, self.store, self.settings, inference.request_id)
        except VoiceNotFound as e:
            stats.fail.add(time.monotonic_ns() - t0)
            raise V2Error(400, f"parameter voice: {e}") from None
        except BackendError as e:
            stats.fail.add(time.monotonic_ns() - t0)
            raise backend_error(e.info, inference.request_id, self.settings.retry_after_s) from None
        t_first = time.monotonic_ns()
        max_samples = round(speech.max_audio_seconds * SAMPLE_RATE_HZ) if speech.max_audio_seconds else None
        total, ok = 0, False
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
            ok = True
        except BackendError as e:
            raise backend_error(e.info, inference.request_id, self.settings.retry_after_s) from None
        finally:
            await started.rest.aclose()
            t_end = time.monotonic_ns()
            if ok:
                stats.success.add(t_end - t0)
                stats.queue.add(t_first - t0)
                stats.compute_infer.add(t_end - t_first)
                stats.inference_count += 1
                stats.last_inference_ms = time.time_ns() // 1_000_000
            else:
                stats.fail.add(t_end - t0)

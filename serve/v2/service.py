"""What both v2 edges (HTTP routes, gRPC servicer) call: the models this server offers (the ids
of GET /v1/models, one version each), readiness, and inference over the shared request path
(serve/speech.py), with Triton's statistics kept per model.

Statistics are this ingress process's view (a Ray deployment with several ingress replicas
reports per replica). Triton's fields, as measured here: `queue` is from the request to its
first audio (admission and the prompt's prefill), `compute_infer` from the first audio to the
last, `compute_input` the request's validation, `compute_output` the response's encoding.
The engine batches every running request into each frame's step, so Triton's batch counts
have no analogue per request: `execution_count` equals `inference_count`, and the engine's
own batch sizes are in the `tts_engine_*` metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from contract.errors import ReplicaError
from contract.stats import Instances
from models.params import SAMPLE_RATE_HZ

from ..audio import Resample, as_mono_float
from ..speech import SpeechService, SpeechStream, StreamTiming
from .protocol import VERSION, TextInference, V2Error, v2_error
from .sequences import Sequences


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
    def __init__(self, speech: SpeechService) -> None:
        self.speech, self.settings = speech, speech.settings
        self.models = list(speech.models)
        self.stats = {name: ModelStats() for name in self.models}
        self.sequences = Sequences(speech.conversations)

    def check_model(self, model: str, version: str | None = None) -> None:
        if model not in self.stats:
            raise V2Error(404, f"unknown model '{model}'; this server has: {', '.join(self.models)}")
        if version not in (None, "", VERSION):
            raise V2Error(404, f"unknown version '{version}' of model '{model}'; it has version {VERSION}")

    async def is_ready(self) -> bool:
        return await self.speech.backend.is_ready()

    async def instances(self) -> Instances:
        return await self.speech.backend.instances()

    async def start(self, inference: TextInference) -> SpeechStream:
        """Start the inference (a sequence's first request creates its conversation); raises
        V2Error (bad voice, overload, ...), recording the failure."""
        try:
            if inference.sequence is not None:
                await self.sequences.begin(inference.sequence)
            return await self.speech.start(inference.speech, inference.protocol, inference.request_id, "fp32",
                                           inference.timeout_s)
        except (ReplicaError, V2Error) as e:
            self._record_failure(inference)
            if inference.sequence is not None:
                await self.sequences.finish(inference.sequence)
            if isinstance(e, V2Error):
                raise
            raise v2_error(e.info, inference.request_id, self.settings.retry_after_s) from None

    async def audio(self, inference: TextInference, stream: SpeechStream) -> AsyncIterator[np.ndarray]:
        """The stream's audio as the `audio` tensor's values (float32, -1..1). Raises V2Error
        mid-stream (rarely: a failed engine); a stream that does not end well is recorded as
        a failure, and on success the edge calls `record_success` once its responses are out.
        Closing the iterator early aborts the generation."""
        resample = Resample(inference.rate) if inference.rate != SAMPLE_RATE_HZ else None
        try:
            async for chunk in stream.audio():
                samples = as_mono_float(chunk)  # -1..1, as the OpenAI edge's encoders send it
                samples = resample.process(samples) if resample else samples
                if samples.size:
                    yield samples
            tail = resample.flush() if resample else None
            if tail is not None and tail.size:
                yield tail
        except ReplicaError as e:
            raise v2_error(e.info, inference.request_id, self.settings.retry_after_s) from None
        finally:
            await stream.aclose()
            if stream.outcome != "ok":
                self._record_failure(inference)
            if inference.sequence is not None:  # its turn is kept (or not) by now
                await self.sequences.finish(inference.sequence)

    def record_success(self, inference: TextInference, timing: StreamTiming, output_ns: int) -> None:
        """Count a successful inference: every duration at once (perf_analyzer requires their
        counts to move together). `output_ns`: what the edge spent encoding responses."""
        stats = self.stats[inference.model]
        stats.success.add(time.monotonic_ns() - inference.arrived_ns)
        stats.queue.add(timing.first_ns - inference.arrived_ns if timing.first_ns else 0)
        stats.compute_input.add(inference.validated_ns - inference.arrived_ns)
        stats.compute_infer.add(timing.end_ns - timing.first_ns if timing.first_ns else 0)
        stats.compute_output.add(output_ns)
        stats.inference_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000

    def _record_failure(self, inference: TextInference) -> None:
        self.stats[inference.model].fail.add(time.monotonic_ns() - inference.arrived_ns)

"""One definition of every metric (name, kind, labels, buckets) and two ways to record them:
prometheus-client (the in-process server's /metrics) or Ray Serve's metrics (bound in
deployments/, exported by Ray's metrics agent with a `ray_` prefix). The edges record the
request metrics, a replica the engine's (replica/recorder.py), and the dashboard and alerts
(queries.py) read them. No torch, no ray here.

Names follow Prometheus conventions: `tts_` prefix, base units, `_total` counters,
`_seconds` histograms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)
RTF_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
STAGE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


REQUESTS = MetricDef("tts_requests_total", "counter", "Speech requests by outcome (ok, client_error, rejected, error, cancelled) and protocol (openai, websocket, v2-http, v2-grpc).", ("outcome", "format", "voice", "protocol"))
ERRORS = MetricDef("tts_errors_total", "counter", "Error responses by HTTP status code.", ("code",))
TTFA = MetricDef("tts_time_to_first_audio_seconds", "histogram", "From request received to first audio chunk ready.", (), LATENCY_BUCKETS)
DURATION = MetricDef("tts_request_duration_seconds", "histogram", "From request received to last audio chunk sent.", (), LATENCY_BUCKETS)
RTF = MetricDef("tts_real_time_factor", "histogram", "Generation time / audio duration, per request (< 1 is faster than real time).", (), RTF_BUCKETS)
SLACK_BUCKETS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # Ray's histograms take positive bounds only
UNDERRUNS = MetricDef("tts_stream_underruns_total", "counter", "Gaps a real-time listener of a streamed response would hear: its next audio arrived after what it had was played (playback from the first chunk, 24 kHz, no client buffer).", ("protocol",))
UNDERRUN_SECONDS = MetricDef("tts_stream_underrun_seconds_total", "counter", "Seconds of silence those gaps add up to.", ("protocol",))
MIN_SLACK = MetricDef("tts_stream_min_slack_seconds", "histogram", "Per streamed response, the least audio its listener had buffered when the next chunk arrived (a gap is observed as 0, in the lowest bucket; tts_stream_underruns_total counts them).", ("protocol",), SLACK_BUCKETS)
AUDIO_SECONDS = MetricDef("tts_audio_seconds_total", "counter", "Seconds of audio produced.")
AUDIO_FRAMES = MetricDef("tts_audio_frames_total", "counter", "Audio frames (80 ms) produced by the engine.")
INPUT_CHARS = MetricDef("tts_input_characters_total", "counter", "Characters of input text received.")
RUNNING = MetricDef("tts_engine_running_requests", "gauge", "Requests holding a KV slot.")
WAITING = MetricDef("tts_engine_waiting_requests", "gauge", "Requests waiting for a KV slot.")
KV_USED = MetricDef("tts_engine_kv_slots_used", "gauge", "KV cache slots in use.")
KV_TOTAL = MetricDef("tts_engine_kv_slots_total", "gauge", "KV cache slots (max_num_seqs).")
BATCH_SIZE = MetricDef("tts_engine_batch_size", "histogram", "Rows sampled per engine step.", (), BATCH_BUCKETS)
STEP_SECONDS = MetricDef("tts_engine_step_duration_seconds", "histogram", "Wall time of one engine step.", (), STEP_BUCKETS)
FINISHED = MetricDef("tts_engine_requests_finished_total", "counter", "Engine requests (text segments) by how they ended: eos (the model stopped), length (ran to its frame cap), abort (client gone or cut), error (a failed step).", ("reason",))
STAGE_SECONDS = MetricDef("tts_stage_seconds", "histogram", "Where a stream's time goes, by stage: queue (waiting to start, per stream), prefill (a text's first frame after it entered the engine), decode (one Mimi chunk), encode (one chunk encoded and handed to the transport, at the edge), transport (one chunk from the replica to the edge, under Ray). Engine steps: tts_engine_step_duration_seconds.", ("stage",), STAGE_BUCKETS)
CAPACITY = MetricDef("tts_realtime_capacity_streams", "gauge", "Interactive streams the replica predicts it keeps real time (learned step time per batch size; max_num_seqs with real-time admission off).")
HEADROOM = MetricDef("tts_realtime_headroom_streams", "gauge", "Interactive streams that could start on the replica now without waiting (free rows within the real-time capacity).")
STREAMS = MetricDef("tts_streams", "gauge", "Speech streams the replica holds, by priority (interactive, batch).", ("priority",))
PAUSED = MetricDef("tts_engine_paused_requests", "gauge", "Batch-priority requests the latest engine step paused (slot kept) so interactive streams stay real time.")
CONTEXT_LOOKUPS = MetricDef("tts_context_cache_lookups_total", "counter", "Context prefix lookups by kind (voice, conversation) and result (hit: its KV was cached; miss: computed).", ("kind", "result"))
CONTEXT_EVICTIONS = MetricDef("tts_context_cache_evictions_total", "counter", "Context prefixes evicted (least recently used) to stay within the cache's byte budget.")
CONTEXT_BYTES = MetricDef("tts_context_cache_bytes", "gauge", "Bytes of prefix KV the context cache holds.")
CONTEXT_POSITIONS = MetricDef("tts_context_positions_total", "counter", "Backbone positions of requests' contexts by kind (voice, conversation) and how each request had them: reused (from a cached prefix) or computed (prefilled for it). For conversations, reused over all is how often turns landed where their context was.", ("kind", "how"))
CONVERSATIONS = MetricDef("tts_conversations", "gauge", "Conversations kept in the store, as the ingress last counted them (on each create and delete).")
CONTEXT_ENTRIES = MetricDef("tts_context_cache_entries", "gauge", "Context prefixes (voices, conversations) the cache holds.")
MEM_USED = MetricDef("tts_device_memory_used_bytes", "gauge", "Device memory in use (process RSS on CPU).", ("device",))
MEM_TOTAL = MetricDef("tts_device_memory_total_bytes", "gauge", "Device memory capacity (physical RAM on CPU).", ("device",))
RSS = MetricDef("tts_process_resident_memory_bytes", "gauge", "Resident memory of the engine process.")
LOAD_SECONDS = MetricDef("tts_model_load_seconds", "gauge", "Time to load the model.")
MODEL_INFO = MetricDef("tts_model_info", "gauge", "Always 1; the model, dtype, device and the card Ray gave this replica as labels.", ("model", "dtype", "device", "card"))

ALL = (REQUESTS, ERRORS, TTFA, DURATION, RTF, UNDERRUNS, UNDERRUN_SECONDS, MIN_SLACK, AUDIO_SECONDS, AUDIO_FRAMES, INPUT_CHARS, RUNNING, WAITING,
       KV_USED, KV_TOTAL, BATCH_SIZE, STEP_SECONDS, STAGE_SECONDS, CAPACITY, HEADROOM, STREAMS, PAUSED, FINISHED, CONTEXT_LOOKUPS, CONTEXT_EVICTIONS, CONTEXT_BYTES,
       CONTEXT_ENTRIES, CONTEXT_POSITIONS, CONVERSATIONS, MEM_USED, MEM_TOTAL, RSS, LOAD_SECONDS, MODEL_INFO)
REQUEST_METRICS = (REQUESTS, ERRORS, TTFA, DURATION, RTF, UNDERRUNS, UNDERRUN_SECONDS, MIN_SLACK, AUDIO_SECONDS,
                   INPUT_CHARS, STAGE_SECONDS, CONVERSATIONS)  # recorded by the edges (and stages by replicas too)
REPLICA_METRICS = (*(d for d in ALL if d not in REQUEST_METRICS), STAGE_SECONDS)  # recorded by a replica


class MetricsSink(Protocol):
    """Where metrics are recorded, by definition. Two implementations: `Metrics` here
    (prometheus-client) and deployments.metrics.RayMetrics (ray.serve.metrics)."""

    def inc(self, d: MetricDef, value: float = 1.0, labels: dict[str, str] | None = None) -> None: ...

    def set(self, d: MetricDef, value: float, labels: dict[str, str] | None = None) -> None: ...

    def observe(self, d: MetricDef, value: float, labels: dict[str, str] | None = None) -> None: ...


class InstrumentSink:
    """A MetricsSink over one library's instruments: subclasses say how to make an
    instrument for a definition (`make`) and how to apply labels to it (`bind`)."""

    def __init__(self, defs: tuple[MetricDef, ...] = ALL) -> None:
        self._instruments = {d.name: self.make(d) for d in defs}

    def make(self, d: MetricDef) -> Any:
        raise NotImplementedError

    def bind(self, instrument: Any, labels: dict[str, str] | None) -> Any:
        """An object with inc/set/observe(value) for these labels."""
        raise NotImplementedError

    def inc(self, d: MetricDef, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        self.bind(self._instruments[d.name], labels).inc(value)

    def set(self, d: MetricDef, value: float, labels: dict[str, str] | None = None) -> None:
        self.bind(self._instruments[d.name], labels).set(value)

    def observe(self, d: MetricDef, value: float, labels: dict[str, str] | None = None) -> None:
        self.bind(self._instruments[d.name], labels).observe(value)


class Metrics(InstrumentSink):
    """prometheus-client instruments in a registry of their own (served at /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None, defs: tuple[MetricDef, ...] = ALL) -> None:
        self.registry = registry or CollectorRegistry()
        super().__init__(defs)

    def make(self, d: MetricDef):
        if d.kind == "counter":
            return Counter(d.name.removesuffix("_total"), d.help, d.labels, registry=self.registry)
        if d.kind == "gauge":
            return Gauge(d.name, d.help, d.labels, registry=self.registry)
        return Histogram(d.name, d.help, d.labels, buckets=d.buckets, registry=self.registry)

    def bind(self, instrument, labels: dict[str, str] | None):
        return instrument.labels(**labels) if labels else instrument

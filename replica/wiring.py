"""A Replica's parts, built and joined top to bottom (replica.py serves with them): the step
timing and real-time policy, the engine's loop, the context cache with the voices and
conversations in it, the admission, the speech pipeline. Two joins point back up, both named
where they are made: the engine thread's step hook learns the pipeline's join costs, and the
admission asks the pipeline whether a listener is behind."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from contract.job import SpeechJob
from contract.stats import Instances, instance_kind
from models.codec.mimi_stream import StreamingMimiDecoder
from models.core.config import EngineConfig
from models.core.threads import ThreadPlan
from models.engine import Engine
from models.frontend.decoder import MimiDecodeWorker
from models.frontend.engine_loop import EngineLoop
from models.params import FRAME_RATE_HZ, EngineStats
from observability.metrics import MetricsSink
from stores.conversations import ConversationStore
from stores.voices import VoiceStore

from .admission import Admission
from .config import ReplicaConfig
from .context_cache import ContextCache
from .conversations import ConversationContexts
from .joins import JoinGate
from .pipeline import SpeechPipeline, chunk_frames
from .realtime import RealtimePolicy, StepTimes
from .recorder import EngineRecorder
from .voices import VoiceContexts


@dataclass(frozen=True)
class ReplicaParts:
    config: ReplicaConfig
    threads: ThreadPlan
    step_times: StepTimes
    loop: EngineLoop
    contexts: ContextCache
    voices: VoiceContexts
    conversations: ConversationContexts | None
    pipeline: SpeechPipeline
    recorder: EngineRecorder | None
    instances: Instances
    room_frames: Callable[[SpeechJob], int]


class StepObserver:
    """After every engine step, on its thread: learn the step period and what a joining text
    costs (`joins`, set once the pipeline exists), record metrics."""

    def __init__(self, step_times: StepTimes, recorder: EngineRecorder | None) -> None:
        self.step_times, self.recorder = step_times, recorder
        self.joins: JoinGate | None = None

    def __call__(self, stats: EngineStats) -> None:
        if stats.period_batch:
            self.step_times.observe(stats.period_batch, stats.period_s)
        if stats.last_num_prefills and self.joins is not None:
            decode_s = (self.step_times.model.predict(stats.last_num_decodes) or 0.0) if stats.last_num_decodes else 0.0
            self.joins.observe(stats.last_num_prefills, stats.last_step_s, decode_s)
        if self.recorder is not None:
            self.recorder.on_step(stats)


def room_frames(engine: Engine) -> Callable[[SpeechJob], int]:
    """Positions a conversation turn's reply may take past its context (conversations.py): its
    text pieces and frames at a slow speaking rate (each piece follows the one before it, so two
    pieces' worth), at most the stream's audio cap."""
    config: EngineConfig = engine.config
    default_max_frames = engine.default_max_frames

    def room(job: SpeechJob) -> int:
        frames = default_max_frames(" ".join(job.texts)) + config.frames_margin + 8
        if job.max_audio_s is not None:
            frames = min(frames, math.ceil(job.max_audio_s * FRAME_RATE_HZ) + 8)
        return min(frames, 2 * config.max_frames_cap)

    return room


def wire(engine: Engine, store: VoiceStore, config: ReplicaConfig, metrics: MetricsSink | None,
         max_waiting: int, conversation_store: ConversationStore | None) -> ReplicaParts:
    """Build a replica's parts over a warmed-up engine (arguments as Replica's)."""
    loaded, rows = engine.loaded, engine.config.max_num_seqs
    codec = loaded.model.codec_model
    recorder = EngineRecorder(metrics, loaded) if metrics is not None else None
    threads = ThreadPlan.for_device(loaded.device.type, engine=config.engine_threads, decode=config.decode_threads)

    # what a step costs, and so how many streams keep real time; the batch rows it leaves
    step_times = StepTimes()
    realtime = RealtimePolicy(step_times, rows, config.realtime_margin, config.realtime_admission)
    engine.set_batch_rows(realtime.batch_rows)
    on_step = StepObserver(step_times, recorder)
    loop = EngineLoop(engine, on_step=on_step, threads=threads.engine)

    # the prefixes voices and conversations are spoken after
    contexts = ContextCache(config.context_cache_bytes, recorder.on_cache if recorder else None)
    if recorder is not None:
        recorder.on_cache(contexts.stats())
    voices = VoiceContexts(store, contexts, loop, codec)
    room = room_frames(engine)
    conversations = ConversationContexts(
        conversation_store, contexts, loop, codec, loaded.tokenizer, engine.config.max_seq_len, room,
        config.conversation_refill) if conversation_store is not None else None

    # who gets a row, and the streams on them
    batch_rows = config.max_batch_rows if config.max_batch_rows is not None else max(1, rows // 2)
    admission = Admission(rows, max_waiting, realtime, batch_rows, config.admission_wait_s, config.batch_wait_s)
    decoder = MimiDecodeWorker(StreamingMimiDecoder(codec, rows), threads.decode)
    pipeline = SpeechPipeline(loop, admission, decoder, chunk_frames(config.chunk_s),
                              recorder.on_stage if recorder else None, lead=config.realtime_margin)

    # the two joins back up
    on_step.joins = pipeline.joins
    if config.realtime_admission:
        admission.is_behind = pipeline.is_behind

    instances = Instances(kind=instance_kind(loaded.device.type), count=1, max_num_seqs=rows,
                          max_positions=engine.config.max_seq_len)
    return ReplicaParts(config, threads, step_times, loop, contexts, voices, conversations, pipeline, recorder,
                        instances, room)

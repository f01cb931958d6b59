"""What one card serves, end to end: the engine's step loop, the speech pipeline (admission,
text chaining, batched streaming Mimi), the context cache with the voices in it, the
metrics recorder, and engine errors turned into typed error records. Framework-free (no
ray, no fastapi): the in-process server serves a Replica directly, and the Ray deployment
(deployments/replica.py) is a thin shell around one per card.

A Replica satisfies the edges' `SpeechBackend` protocol (contract/backend.py). Event-loop
state: its async methods run on one asyncio loop; `stats()` may be read from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator

import numpy as np

from contract.errors import ErrorInfo, ReplicaError, error_info
from contract.job import SpeechJob
from contract.stats import Instances, ReplicaStats, instance_kind
from contract.text_feed import PieceDone, QueueFeed
from models.codec.mimi_stream import StreamingMimiDecoder
from models.core.config import EngineConfig
from models.core.threads import ThreadPlan
from models.engine import Engine, StepHook, build_engine
from models.errors import Overloaded
from models.frontend.decoder import MimiDecodeWorker
from models.frontend.engine_loop import EngineLoop
from models.params import FRAME_RATE_HZ, EngineStats, Priority
from observability.metrics import MetricsSink
from stores.conversations import ConversationError, ConversationStore
from stores.voices import Voice, VoiceStore

from .admission import Admission
from .config import ReplicaConfig
from .context_cache import ContextCache
from .conversations import ConversationContexts
from .pipeline import SpeechPipeline, chunk_frames
from .realtime import RealtimePolicy, StepTimes, budget_s, profile_sizes
from .recorder import EngineRecorder, held_card
from .voices import SYNC_INTERVAL_S, VoiceContexts

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, engine: Engine, store: VoiceStore, config: ReplicaConfig | None = None,
                 metrics: MetricsSink | None = None, max_waiting: int = 0,
                 conversations: ConversationStore | None = None) -> None:
        """Serve a warmed-up engine: `max_waiting` streams may wait for one of its
        `max_num_seqs` rows (0 under Ray, where Serve's router queues; see admission.py),
        `metrics` (optional) gets the engine's and the cache's metrics, `conversations`
        (optional) is the store conversation turns are spoken from and kept in."""
        config = config or ReplicaConfig()
        recorder = EngineRecorder(metrics, engine.loaded) if metrics is not None else None
        self.threads = ThreadPlan.for_device(engine.loaded.device.type, engine=config.engine_threads,
                                             decode=config.decode_threads)
        log.info("intra-op threads: engine %d, decode %d", self.threads.engine, self.threads.decode)
        codec, rows = engine.loaded.model.codec_model, engine.config.max_num_seqs
        self.step_times = StepTimes()
        self.realtime = RealtimePolicy(self.step_times, rows, config.realtime_margin, config.realtime_admission)
        engine.set_batch_rows(self.realtime.batch_rows)
        self._recorder = recorder
        self._loop = EngineLoop(engine, on_step=self._on_step, threads=self.threads.engine)
        self._config = config
        if config.realtime_admission:  # first estimates: the idle engine's period per batch size
            self._seed_profile(self._loop.call(self._profile_idle).result())
        else:
            self.step_times.observe(1, engine.stats().last_step_s)  # warm-up's last step: what capacity reports
        self.contexts = ContextCache(config.context_cache_bytes, recorder.on_cache if recorder else None)
        if recorder is not None:
            recorder.on_cache(self.contexts.stats())
        self.voices = VoiceContexts(store, self.contexts, self._loop, codec)
        self._engine_config, self._default_max_frames = engine.config, engine.default_max_frames
        self.conversations = ConversationContexts(
            conversations, self.contexts, self._loop, codec, engine.loaded.tokenizer, engine.config.max_seq_len,
            self._room_frames, config.conversation_refill) if conversations is not None else None
        batch_rows = config.max_batch_rows if config.max_batch_rows is not None else max(1, rows // 2)
        admission = Admission(rows, max_waiting, self.realtime, batch_rows, config.admission_wait_s,
                              config.batch_wait_s,
                              is_behind=lambda: self.pipeline.is_behind() if config.realtime_admission else False)
        self.pipeline = SpeechPipeline(self._loop, admission,
                                       MimiDecodeWorker(StreamingMimiDecoder(codec, rows), self.threads.decode),
                                       chunk_frames(config.chunk_s), recorder.on_stage if recorder else None,
                                       lead=config.realtime_margin)
        self._instances = Instances(kind=instance_kind(engine.loaded.device.type), count=1, max_num_seqs=rows,
                                    max_positions=engine.config.max_seq_len)
        self._background: list[asyncio.Task] = []
        self._streams: tuple[str, ...] = ()  # request ids inside synthesize; replaced, never mutated (stats())

    @classmethod
    def build(cls, engine_config: EngineConfig, store: VoiceStore, config: ReplicaConfig | None = None,
              metrics: MetricsSink | None = None, max_waiting: int = 0,
              before_step: StepHook | None = None, conversations: ConversationStore | None = None) -> Replica:
        """Load the configured model, warm its engine up (the replica is ready after this)
        and serve it. `before_step`: the engine's fault-injection seam (tests)."""
        engine = build_engine(engine_config, before_step)
        engine.warm_up()
        return cls(engine, store, config, metrics, max_waiting, conversations)

    def _on_step(self, stats: EngineStats) -> None:
        """After every engine step, on its thread: learn the step period and what a joining
        text costs, record metrics."""
        if stats.period_batch:
            self.step_times.observe(stats.period_batch, stats.period_s)
        if stats.last_num_prefills:
            decode_s = (self.step_times.model.predict(stats.last_num_decodes) or 0.0) if stats.last_num_decodes else 0.0
            self.pipeline.joins.observe(stats.last_num_prefills, stats.last_step_s, decode_s)
        if self._recorder is not None:
            self._recorder.on_step(stats)

    def start_background(self) -> None:
        """On the running loop, for the replica's life: follow the stores (forget voices deleted
        or changed, conversations deleted or expired, within a second, with no request needed)
        and keep the idle profile fresh (keep_profile)."""
        if not self._background:
            loop = asyncio.get_running_loop()
            self._background = [loop.create_task(self.follow_stores())]
            if self._config.realtime_admission:
                self._background.append(loop.create_task(self.keep_profile()))

    def _profile_idle(self, engine: Engine) -> tuple[tuple[int, float], ...]:
        """On the engine's thread: the idle profile, if the engine is idle; it yields to any
        command that arrives meanwhile (a stream's request) and returns what it completed."""
        if engine.has_unfinished_requests():
            return ()
        sizes = profile_sizes(engine.config.max_num_seqs)
        return engine.profile_steps(sizes, stop_above_s=2 * budget_s(self._config.realtime_margin),
                                    should_stop=self._loop.has_commands)

    def _seed_profile(self, profile: tuple[tuple[int, float], ...]) -> None:
        """Take a new idle profile: its sizes replace the old ones' (an interrupted profile
        renews only the sizes it completed)."""
        if not profile:
            return
        merged = {**dict(self.step_times.inputs(0).profile), **dict(profile)}
        self.step_times.seed(tuple(sorted(merged.items())))
        log.info("step period per batch size (idle): %s", ", ".join(f"{b}: {t * 1e3:.1f} ms" for b, t in profile))

    async def keep_profile(self, idle_s: float = 2.0, every_s: float = 60.0) -> None:
        """Re-time the idle profile once no stream has been here for `idle_s` and the profile
        is over `every_s` old, so one taken in a slow moment does not stay (realtime.py)."""
        idle_since: float | None = None
        while True:
            await asyncio.sleep(idle_s / 4)
            admission = self.pipeline.admission
            if admission.num_active or admission.num_waiting:
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            profiled_at = self.step_times.inputs(0).profiled_at
            if now - idle_since >= idle_s and (profiled_at is None or now - profiled_at >= every_s):
                try:
                    self._seed_profile(await asyncio.wrap_future(self._loop.call(self._profile_idle)))
                except Exception:
                    log.exception("re-profiling the idle engine failed")
                idle_since = None

    async def follow_stores(self, interval_s: float = SYNC_INTERVAL_S) -> None:
        """Sync with the stores forever; errors are logged, never fatal."""
        syncs = [("voices", self.voices.sync)]
        if self.conversations is not None:
            syncs.append(("conversations", self.conversations.sync))
        while True:
            await asyncio.sleep(interval_s)
            for what, sync in syncs:
                try:
                    if forgotten := await sync():
                        log.info("forgot %s gone from the store: %s", what, ", ".join(forgotten))
                except Exception:
                    log.exception("%s sync failed", what)

    # ---- the SpeechBackend protocol ------------------------------------------------------------
    async def is_ready(self) -> bool:
        return self._loop.is_alive

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray | PieceDone]:
        """Float32 24 kHz mono PCM chunks of the job's texts (and its feed's) in its voice, at
        most max_audio_s long, with a PieceDone after each text's audio if the job asks for
        marks; a conversation's turn is spoken after its earlier turns and kept in it when the
        stream completes. The stream is admitted or refused first (admission.py); only then is
        its voice's or conversation's prefix computed and the conversation's turn lock taken, so
        a refused stream costs no engine time. Every failure is a ReplicaError (before the first
        chunk for overload and unusable input); closing the iterator aborts the generation."""
        self._streams = (*self._streams, job.request_id)
        try:
            async with self.pipeline.admit(job.priority, job.timeout_s) as ticket:
                self._record_admission()
                prefix = await self.voices.prefix(job.voice)
                if job.conversation is None:
                    async with contextlib.aclosing(self.pipeline.speak(ticket, job, prefix)) as items:
                        async for item in items:
                            yield item
                    return
                if self.conversations is None:
                    raise ConversationError("conversation", "conversations are disabled: no conversations directory "
                                            "is configured")
                async with (self.conversations.turn(job, prefix) as plan,
                            contextlib.aclosing(self.pipeline.speak(ticket, job, plan.prefix,
                                                                     plan.segment_done)) as items):
                    async for item in items:
                        yield item
                    await self.conversations.complete(job, plan)  # only a stream that ran to its end
        except Exception as e:
            raise ReplicaError(error_info(e, job.request_id)) from None
        finally:
            self._streams = tuple(r for r in self._streams if r != job.request_id)
            self._record_admission()

    def _room_frames(self, job: SpeechJob) -> int:
        """Positions a conversation turn's reply may take past its context (conversations.py):
        its text pieces and frames at a slow speaking rate (each piece follows the one before
        it, so two pieces' worth), at most the stream's audio cap."""
        config = self._engine_config
        frames = self._default_max_frames(" ".join(job.texts)) + config.frames_margin + 8
        if job.max_audio_s is not None:
            frames = min(frames, math.ceil(job.max_audio_s * FRAME_RATE_HZ) + 8)
        return min(frames, 2 * config.max_frames_cap)

    def _record_admission(self) -> None:
        if self._recorder is not None:
            admission = self.pipeline.admission
            self._recorder.on_admission(admission.capacity(), admission.headroom(), admission.num_held("interactive"),
                                        admission.num_held("batch"))

    async def check_admission(self, priority: Priority) -> ErrorInfo | None:
        """A refusal now if an interactive stream could not start within the admission's wait
        (the same rule `synthesize` applies; it still decides)."""
        admission = self.pipeline.admission
        if priority != "interactive" or (expected := admission.expected_start_s(priority)) <= admission.wait_s:
            return None
        admission.num_refused += 1
        return error_info(Overloaded("at capacity", None if math.isinf(expected) else expected), "admission")

    def open_feed(self) -> QueueFeed:
        """A text feed for a job (in-process: one asyncio queue)."""
        return QueueFeed()

    async def add_voice(self, voice: Voice) -> None:
        """Load a stored voice here now, so one the model cannot take is refused at upload
        (ReplicaError, invalid_request)."""
        try:
            await self.voices.prefix(voice)
        except Exception as e:
            raise ReplicaError(error_info(e, f"voice {voice.id}")) from None

    async def forget_voice(self, voice_id: str) -> None:
        self.voices.forget(voice_id)

    async def forget_conversation(self, conversation_id: str) -> None:
        if self.conversations is not None:
            self.conversations.forget(conversation_id)

    async def instances(self) -> Instances:
        return self._instances

    # ---- operating it --------------------------------------------------------------------------
    def stats(self) -> ReplicaStats:
        admission = self.pipeline.admission
        return ReplicaStats(
            engine=self._loop.stats(), contexts=self.contexts.stats(), num_streams=admission.num_active,
            num_waiting_streams=admission.num_waiting, streams=self._streams,
            voices=tuple(self.voices.loaded), pid=os.getpid(),
            conversations=tuple(key.id for key in self.contexts.keys("conversation")),
            num_threads=threading.active_count(), card=held_card(), num_batch_streams=admission.num_held("batch"),
            realtime_capacity=admission.capacity(), headroom=admission.headroom(),
            num_waiting_batch_streams=admission.num_waiting_for("batch"),
            realtime=self.step_times.inputs(self._engine_config.max_num_seqs), niceness=self._niceness(),
            num_deferred_joins=self.pipeline.joins.num_deferred, num_refused_streams=admission.num_refused)

    def _niceness(self) -> int:
        tid = self._loop.thread_id
        try:
            return os.getpriority(os.PRIO_PROCESS, tid) if tid is not None else 0
        except OSError:  # the thread is gone
            return 0

    def check_health(self) -> None:
        """Raise EngineDeadError if the engine's loop has stopped."""
        self._loop.check_health()

    def shutdown(self) -> None:
        """Stop the engine's loop (streams in flight end with EngineDeadError) and the decoder."""
        for task in self._background:  # thread-safe: a test may stop a replica from another thread
            task.get_loop().call_soon_threadsafe(task.cancel)
        self.pipeline.shutdown()

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
from contract.stats import Instances, ReplicaStats
from contract.text_feed import PieceDone, QueueFeed
from models.core.config import EngineConfig
from models.engine import Engine, StepHook, build_engine
from models.errors import Overloaded
from models.params import Priority
from observability.metrics import MetricsSink
from stores.conversations import ConversationError, ConversationStore
from stores.voices import Voice, VoiceStore

from .config import ReplicaConfig
from .realtime import budget_s, profile_sizes
from .recorder import held_card
from .voices import SYNC_INTERVAL_S
from .wiring import wire

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, engine: Engine, store: VoiceStore, config: ReplicaConfig | None = None,
                 metrics: MetricsSink | None = None, max_waiting: int = 0,
                 conversations: ConversationStore | None = None) -> None:
        """Serve a warmed-up engine: `max_waiting` streams may wait for one of its
        `max_num_seqs` rows (0 under Ray, where Serve's router queues; see admission.py),
        `metrics` (optional) gets the engine's and the cache's metrics, `conversations`
        (optional) is the store conversation turns are spoken from and kept in. The parts
        are built in wiring.py."""
        parts = wire(engine, store, config or ReplicaConfig(), metrics, max_waiting, conversations)
        self._config, self.threads, self.step_times, self._loop = parts.config, parts.threads, parts.step_times, parts.loop
        self.contexts, self.voices, self.conversations = parts.contexts, parts.voices, parts.conversations
        self.pipeline, self._recorder, self._instances = parts.pipeline, parts.recorder, parts.instances
        self._room_frames, self._rows = parts.room_frames, engine.config.max_num_seqs
        log.info("intra-op threads: engine %d, decode %d", self.threads.engine, self.threads.decode)
        if self._config.realtime_admission:  # first estimates: the idle engine's period per batch size
            self._seed_profile(self._loop.call(self._profile_idle).result())
        else:
            self.step_times.observe(1, engine.stats().last_step_s)  # warm-up's last step: what capacity reports
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
            realtime=self.step_times.inputs(self._rows), niceness=self._niceness(),
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

"""The replica deployment: Ray's thin shell around one `replica.Replica` per card, and the
ingress's `SpeechBackend` over its handle (`RayReplicas`).

The deployment asks Ray for one card (placement.py), builds and warms up the replica in its
constructor (Serve reports it ready only after that), and forwards each call. PCM crosses
the handle as float32 bytes in a WireChunk stamped with the wall time it left the replica
(the ingress records the `transport` stage from it; clocks of different nodes agree only as
far as NTP keeps them), a failure as the replica's ReplicaError (a typed record; never Ray's
remote traceback), and a cancelled stream aborts its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from contract.errors import ErrorInfo, ReplicaError, error_info
from contract.job import SpeechJob
from contract.stats import Instances, ReplicaStats
from contract.text_feed import PieceDone
from models import EngineConfig
from models.engine import StepHook
from models.errors import EngineDeadError, Overloaded
from models.params import Priority
from observability import metrics as m
from observability.metrics import REPLICA_METRICS, MetricsSink
from replica.config import ReplicaConfig
from replica.replica import Replica
from stores.settings import StoreSettings
from stores.voices import Voice, VoiceStore

from .autoscaling import replica_autoscaling_stats
from .headroom import Headroom, HeadroomView
from .metrics import RayMetrics
from .priority import check_priority
from .router import routing_stats
from .text_channel import ChannelFeed, start_channels

log = logging.getLogger(__name__)
REPLICA_NAME = "SpeechReplica"


@dataclass(frozen=True)
class WireChunk:
    """One chunk of a stream across the handle: float32 PCM bytes, and when it left
    (time.time()); or the mark that a piece's audio is all out (a job asking for marks)."""

    pcm: bytes
    sent_at: float
    piece: PieceDone | None = None


@serve.deployment(name=REPLICA_NAME, graceful_shutdown_timeout_s=120, health_check_period_s=10)
class ReplicaDeployment:
    """One Replica on one card. Its admission is the queue (admission.py): Serve's
    max_ongoing_requests leaves room for its rows and its `max_waiting` line (app.py)."""

    def __init__(self, engine: dict, replica: dict, voices_dir: str | None, before_step: StepHook | None = None,
                 server: dict | None = None, max_waiting: int = 0):
        """`server`: the ingress's settings (serve.settings.ServerSettings); their StoreSettings bound the
        conversations' store."""
        check_priority(log)
        store = VoiceStore(voices_dir)
        conversations = StoreSettings(**(server or {})).conversation_store()
        self.replica = Replica.build(EngineConfig(**engine), store, ReplicaConfig(**replica), RayMetrics(REPLICA_METRICS),
                                     max_waiting=max_waiting, before_step=before_step, conversations=conversations)
        self.replica.start_background()  # Serve runs constructors on the replica's event loop

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[WireChunk]:
        try:
            async for item in self.replica.synthesize(job):
                if isinstance(item, PieceDone):
                    yield WireChunk(b"", time.time(), item)
                else:
                    yield WireChunk(item.astype(np.float32).tobytes(), time.time())
        except ReplicaError as e:
            if e.info.kind == "overloaded":  # Serve's router sends at most max_num_seqs: a race to see
                log.warning("request %s: the replica refused a request Serve had admitted", job.request_id)
            raise

    async def add_voice(self, voice: Voice) -> None:
        await self.replica.add_voice(voice)

    async def forget_voice(self, voice_id: str) -> None:
        await self.replica.forget_voice(voice_id)

    async def forget_conversation(self, conversation_id: str) -> None:
        await self.replica.forget_conversation(conversation_id)

    async def instances(self) -> Instances:
        return await self.replica.instances()

    def stats(self) -> ReplicaStats:
        return dataclasses.replace(self.replica.stats(), node_id=ray.get_runtime_context().get_node_id())

    def check_health(self) -> None:
        self.replica.check_health()

    def headroom(self) -> Headroom:
        """What the ingresses' headroom views poll (headroom.py): the streams that could start
        now, and when one more could start once they have (an ingress refuses only when its
        view's headroom is spent, so that is its Retry-After)."""
        admission = self.replica.pipeline.admission
        room = admission.headroom()
        expected = admission.expected_start_s("interactive", ahead=room)
        return Headroom(room, None if math.isinf(expected) else expected)

    def record_routing_stats(self) -> dict[str, int]:
        """Serve's controller polls this (router.ROUTING_STATS_PERIOD_S) for the routers:
        the real-time capacity and the batch streams, held and waiting (router.py)."""
        stats = self.replica.stats()
        return routing_stats(stats.realtime_capacity, stats.num_batch_streams + stats.num_waiting_batch_streams)

    def record_autoscaling_stats(self) -> dict[str, int]:
        """Serve calls this while an autoscaling_config is set (every
        min(0.2 x look_back_period_s, metrics_interval_s)) and pushes the series to its
        controller, where deployments/autoscaling.HeadroomPolicy reads them: real-time
        headroom, capacity, streams and streams waiting for headroom."""
        return replica_autoscaling_stats(self.replica.stats())


def ray_error_info(exc: BaseException, request_id: str) -> ErrorInfo:
    """What crossing the handle can raise, as an ErrorInfo: the replica's own ReplicaError
    (inside Ray's task error, whose text is a remote traceback and is never used), Serve's
    backpressure, a replica that died; anything else is internal."""
    if isinstance(exc, BackPressureError):
        return error_info(Overloaded("replica queue is full"), request_id)
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ReplicaError):
        return exc.cause.info
    if isinstance(exc, RayActorError):
        return error_info(EngineDeadError(type(exc).__name__), request_id)
    return error_info(exc, request_id)


class RayReplicas:
    """SpeechBackend over the replica deployment's handle."""

    def __init__(self, replicas: DeploymentHandle, metrics: MetricsSink | None = None) -> None:
        self.replicas = replicas
        self.metrics = metrics  # records the transport stage
        self.headroom = HeadroomView(self._poll_headroom)  # interactive streams refused here when none has any
        self._last_states: dict[str, int] | None = None
        self._channels: ray.actor.ActorHandle | None = None  # deployments/text_channel.py

    async def is_ready(self) -> bool:
        """Ready while Serve's controller reports at least one replica RUNNING: a lost node or
        a replaced replica does not take the service out while another can serve; with none
        left it is not ready. Asks the controller, so it takes no replica's slot."""
        try:
            return (await self._replica_states()).get("RUNNING", 0) > 0
        except Exception:
            return False

    def open_feed(self) -> ChannelFeed:
        """A text feed for a job, on this ingress's channel actor (started on first use)."""
        if self._channels is None:
            self._channels = start_channels()
        return ChannelFeed(self._channels)

    async def check_admission(self, priority: Priority) -> ErrorInfo | None:
        """An interactive stream is refused here when no replica has headroom (headroom.py)."""
        if priority != "interactive":
            return None
        verdict = await self.headroom.admit()
        if verdict.admitted:
            return None
        return error_info(Overloaded("no engine replica has real-time headroom", verdict.retry_after_s), "admission")

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray | PieceDone]:
        stream = None
        try:
            stream = self.replicas.options(stream=True).synthesize.remote(job)
            async for chunk in stream:
                if chunk.piece is not None:
                    yield chunk.piece
                    continue
                if self.metrics is not None:
                    transport_s = max(0.0, time.time() - chunk.sent_at)
                    self.metrics.observe(m.STAGE_SECONDS, transport_s, {"stage": "transport"})
                yield np.frombuffer(chunk.pcm, dtype=np.float32)
        except Exception as e:
            raise ReplicaError(ray_error_info(e, job.request_id)) from None
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # cancel() re-raises a failed call's error
                    stream.cancel()

    async def _poll_headroom(self) -> list[Headroom]:
        return await self.replicas.broadcast("headroom").results_async()

    async def forget_conversation(self, conversation_id: str) -> None:
        """Every replica forgets it now (Serve's broadcast; they also follow the store)."""
        try:
            await self.replicas.broadcast("forget_conversation", conversation_id).results_async()
        except Exception as e:
            raise ReplicaError(ray_error_info(e, f"conversation {conversation_id}")) from None

    async def add_voice(self, voice: Voice) -> None:
        """One replica loads it now (and refuses what the model cannot take); the others load
        it from the voices directory on first use."""
        await self._call("add_voice", voice, request_id=f"voice {voice.id}")

    async def forget_voice(self, voice_id: str) -> None:
        """One replica forgets it now; the others follow the store within a second."""
        await self._call("forget_voice", voice_id, request_id=f"voice {voice_id}")

    async def instances(self) -> Instances:
        """One replica describes its card; Serve's controller counts the running replicas."""
        one = await self._call("instances", request_id="instances")
        try:
            running = (await self._replica_states()).get("RUNNING", 0)
        except Exception as e:
            raise ReplicaError(ray_error_info(e, "instances")) from None
        return one.model_copy(update={"count": max(1, running)})

    async def _call(self, method: str, *args, request_id: str):
        try:
            return await getattr(self.replicas, method).remote(*args)
        except Exception as e:
            raise ReplicaError(ray_error_info(e, request_id)) from None

    async def _replica_states(self) -> dict[str, int]:
        """Replicas per state. While a new config is being built (a rolling update), Serve's
        status can briefly list the application without its deployments: the replicas that
        serve meanwhile are those last seen, not none."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications[serve.get_replica_context().app_name]
        deployment = app.deployments.get(REPLICA_NAME)
        if deployment is not None:
            self._last_states = dict(deployment.replica_states)
        elif self._last_states is None:
            raise LookupError(f"{REPLICA_NAME} is not deployed yet")
        return self._last_states

"""Ray Serve application: SpeechIngress (the FastAPI app) -> TTSEngine (one card each).

`build_app(args)` is what `serve run serve_config.yaml` / `serve deploy` and KubeRay's
serveConfigV2 import. The engine deployment asks Ray for one card of the configured kind
(`{"NPU": 1}` for npu, `num_gpus: 1` for cuda, CPUs only for cpu; auto looks at the
cluster), streams float32 PCM chunks through `handle.options(stream=True)`, and a cancelled
stream aborts its request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator

import grpc
import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.grpc_util import RayServegRPCContext, gRPCInputStream
from ray.serve.handle import DeploymentHandle

from models import Engine, EngineConfig, build_engine
from models.errors import EngineDeadError, Overloaded
from models.frontend.speech import SpeechPipeline, chunk_frames
from serve import metrics as m
from serve.app import create_app
from serve.backend import INTERNAL_MESSAGE, BackendError, ErrorInfo, Instances, SpeechJob, error_info, instance_kind
from serve.settings import ServerSettings
from serve.v2.grpc_messages import pb
from serve.v2.grpc_service import UNARY, InferenceRPC
from serve.v2.protocol import V2Error
from serve.voices import Voice, VoiceStore

from .metrics import EngineRecorder, RayMetrics, held_card
from .placement import AppArgs, engine_actor_options
from .voices import EngineVoices

log = logging.getLogger(__name__)
ENGINE_NAME = "TTSEngine"
INGRESS_METRICS = (m.REQUESTS, m.ERRORS, m.TTFA, m.DURATION, m.RTF, m.AUDIO_SECONDS, m.INPUT_CHARS)


@serve.deployment(name=ENGINE_NAME, graceful_shutdown_timeout_s=120, health_check_period_s=10)
class TTSEngineDeployment:
    """One engine on one card. Serve's router is its queue (max_ongoing_requests =
    max_num_seqs), so the pipeline admits no waiting streams of its own (admission.py)."""

    def __init__(self, engine: dict, voices_dir: str | None, max_sample_bytes: int, chunk_s: float = 0.24) -> None:
        config = EngineConfig(**engine)
        sync_engine = self.build_engine(config)
        sync_engine.warm_up()  # the replica reports ready only after this
        recorder = EngineRecorder(RayMetrics(), sync_engine.loaded)
        self.pipeline = SpeechPipeline.start(sync_engine, max_waiting=0, chunk_frames=chunk_frames(chunk_s),
                                             on_step=recorder.on_step)
        self.voices = EngineVoices(self.pipeline, VoiceStore(voices_dir, max_sample_bytes))
        # Keep this replica's voices in step with the shared store (a delete through any ingress
        # reaches every replica within a second): Serve runs the constructor on the replica's
        # event loop, so the task lives as long as the replica.
        self._follow = asyncio.get_running_loop().create_task(self.voices.follow_store())

    def build_engine(self, config: EngineConfig) -> Engine:
        """Load the model (a seam: fault-injection tests subclass this deployment)."""
        return build_engine(config)

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[bytes]:
        """Stream float32 PCM bytes. Voices load lazily from the shared voices directory, so a
        voice created through any ingress works on every engine replica. Every failure leaves
        as a BackendError (a typed record, never a traceback)."""
        try:
            voice = await self.voices.context(job.voice)
            async for pcm in self.pipeline.stream(job.request_id, list(job.segments), voice, job.params):
                yield pcm.astype(np.float32).tobytes()
        except Exception as e:
            if isinstance(e, Overloaded):  # Serve's router sends at most max_num_seqs: a race to see
                log.warning("request %s: the engine refused a request Serve had admitted: %s", job.request_id, e)
            raise BackendError(error_info(e, job.request_id)) from None

    async def add_voice(self, voice: Voice) -> None:
        """Load a new voice here now, so one the model cannot take is refused at upload."""
        try:
            await self.voices.load(voice)
        except Exception as e:
            raise BackendError(error_info(e, f"voice {voice.id}")) from None

    async def forget_voice(self, voice_id: str) -> None:
        """Forget it here now (the others follow the store within a second)."""
        await self.voices.forget(voice_id)

    def instance(self) -> Instances:
        engine = self.pipeline.engine
        return Instances(kind=instance_kind(engine.device_type), count=1, max_num_seqs=engine.max_num_seqs)

    def stats(self) -> dict:
        return {**self.pipeline.engine.stats().__dict__, "pid": os.getpid(), "num_threads": threading.active_count(),
                "card": held_card(), "node_id": ray.get_runtime_context().get_node_id(), "voices": self.voices.loaded}

    def check_health(self) -> None:
        self.pipeline.engine.check_health()


def ray_error_info(exc: BaseException, request_id: str) -> ErrorInfo:
    """What crossing the handle can raise, as an ErrorInfo: the replica's own BackendError
    (inside Ray's task error, whose text is a remote traceback and is never used), Serve's
    backpressure, a replica that died; anything else is internal."""
    if isinstance(exc, BackPressureError):
        return error_info(Overloaded("engine queue is full"), request_id)
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BackendError):
        return exc.cause.info
    if isinstance(exc, RayActorError):
        return error_info(EngineDeadError(type(exc).__name__), request_id)
    return error_info(exc, request_id)


class RayBackend:
    """SpeechBackend over the engine deployment's handle."""

    def __init__(self, engine: DeploymentHandle) -> None:
        self.engine = engine

    async def is_ready(self) -> bool:
        """Ready while Serve's controller reports at least one engine replica RUNNING: a lost
        node or a replaced replica does not take the service out while another can serve;
        with none left it is not ready. Asks the controller, so it takes no engine slot."""
        try:
            status = await asyncio.to_thread(serve.status)
            app = status.applications[serve.get_replica_context().app_name]
            return app.deployments[ENGINE_NAME].replica_states.get("RUNNING", 0) > 0
        except Exception:
            return False

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        stream = None
        try:
            stream = self.engine.options(stream=True).synthesize.remote(job)
            async for data in stream:
                yield np.frombuffer(data, dtype=np.float32)
        except Exception as e:
            raise BackendError(ray_error_info(e, job.request_id)) from None
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # cancel() re-raises a failed call's error
                    stream.cancel()

    async def add_voice(self, voice: Voice, clips) -> None:
        """One replica loads it now (and refuses what the model cannot take); the others load
        it from the voices directory on first use."""
        try:
            await self.engine.add_voice.remote(voice)
        except Exception as e:
            raise BackendError(ray_error_info(e, f"voice {voice.id}")) from None

    async def remove_voice(self, voice: Voice) -> None:
        try:
            await self.engine.forget_voice.remote(voice.id)
        except Exception as e:
            raise BackendError(ray_error_info(e, f"voice {voice.id}")) from None

    async def instances(self) -> Instances:
        """One replica describes its card; Serve's controller counts the running replicas."""
        try:
            one = await self.engine.instance.remote()
            status = await asyncio.to_thread(serve.status)
            states = status.applications[serve.get_replica_context().app_name].deployments[ENGINE_NAME].replica_states
        except Exception as e:
            raise BackendError(ray_error_info(e, "instances")) from None
        return one.model_copy(update={"count": max(1, states.get("RUNNING", 0))})


@serve.deployment(name="SpeechIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)  # I/O-bound
@serve.ingress()
class SpeechIngress:
    """The FastAPI app from serve.app.create_app, built per replica after __init__; and
    Triton's gRPC service (Serve's gRPC proxy calls the methods named as the RPCs, with
    `grpc_options` in serve_config.yaml), answered by the same v2 service as the HTTP routes."""

    def __init__(self, engine: DeploymentHandle, server: dict) -> None:
        self.settings = ServerSettings(**server)
        self.store = VoiceStore(self.settings.voices_dir, self.settings.max_sample_bytes)
        self.backend = RayBackend(engine)
        self.rpc: InferenceRPC | None = None

    def __serve_build_asgi_app__(self):
        app = create_app(self.backend, self.store, self.settings, RayMetrics(INGRESS_METRICS))
        self.rpc = InferenceRPC(app.state.v2)
        return app

    async def _unary(self, name: str, request, grpc_context: RayServegRPCContext):
        try:
            self.rpc.authorize(grpc_context.invocation_metadata())
            return await getattr(self.rpc, name)(request)
        except V2Error as e:
            grpc_context.set_code(e.grpc_code)
            grpc_context.set_details(e.message)
            return _EMPTY[name]()
        except Exception:  # never a traceback to the client; the log has it
            log.exception("gRPC %s failed", name)
            grpc_context.set_code(grpc.StatusCode.INTERNAL)
            grpc_context.set_details(INTERNAL_MESSAGE)
            return _EMPTY[name]()

    async def ServerLive(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerLive", request, grpc_context)

    async def ServerReady(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerReady", request, grpc_context)

    async def ModelReady(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelReady", request, grpc_context)

    async def ServerMetadata(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerMetadata", request, grpc_context)

    async def ModelMetadata(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelMetadata", request, grpc_context)

    async def ModelConfig(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelConfig", request, grpc_context)

    async def ModelStatistics(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelStatistics", request, grpc_context)

    async def ModelInfer(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelInfer", request, grpc_context)

    async def ModelStreamInfer(self, requests: gRPCInputStream, grpc_context: RayServegRPCContext):
        try:
            self.rpc.authorize(grpc_context.invocation_metadata())
        except V2Error as e:
            grpc_context.set_code(e.grpc_code)
            grpc_context.set_details(e.message)
            return
        async for response in self.rpc.ModelStreamInfer(requests):
            yield response


_EMPTY = {name: getattr(pb, f"{name}Response") for name in UNARY}


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (args from serve_config.yaml).
    Serve requires a builder of exactly one parameter."""
    return build_app_with(args, TTSEngineDeployment)


def build_app_with(args: dict, engine_deployment: Deployment, ingress_options: dict | None = None):
    """The application with a given engine deployment (tests pass a subclass of
    TTSEngineDeployment's class to inject faults) and extra SpeechIngress options (the
    simulated cluster keeps the ingress on its head node)."""
    cfg = AppArgs.model_validate(args or {})
    if cfg.server.get("voices_dir"):  # replicas do not share the driver's working directory
        cfg.server["voices_dir"] = os.path.abspath(cfg.server["voices_dir"])
    settings = ServerSettings(**cfg.server)
    engine = engine_deployment.options(
        ray_actor_options=engine_actor_options(cfg.engine, cfg.cpus_per_engine, cfg.card),
        max_ongoing_requests=cfg.engine.max_num_seqs,
        max_queued_requests=cfg.max_queued_requests,
    ).bind(cfg.engine.model_dump(), settings.voices_dir, settings.max_sample_bytes, settings.chunk_s)
    return SpeechIngress.options(**(ingress_options or {})).bind(engine, cfg.server)

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

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models import AsyncEngine, EngineConfig, GenerationParams, build_engine
from models.speech import NoStreamCapacity, SpeechPipeline, chunk_frames
from serve import metrics as m
from serve.app import create_app
from serve.backend import Overloaded, SynthesisParams
from serve.settings import ServerSettings
from serve.voices import Voice, VoiceStore

from .metrics import EngineRecorder, RayMetrics
from .voices import load_voice

log = logging.getLogger(__name__)
ENGINE_NAME = "TTSEngine"
INGRESS_METRICS = (m.REQUESTS, m.ERRORS, m.TTFA, m.DURATION, m.RTF, m.AUDIO_SECONDS, m.INPUT_CHARS)


class AppArgs(BaseModel):
    """The `args:` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    server: dict = Field(default_factory=dict, description="ServerSettings fields")
    cpus_per_engine: float = Field(2, gt=0, description="CPU cores per engine replica on device cpu")
    max_queued_requests: int = Field(32, ge=0, description="requests waiting per caller beyond the slots")


def engine_actor_options(engine: EngineConfig, cpus: float) -> dict:
    """One card per replica: NPU as a custom resource, GPU as num_gpus, else CPUs."""
    device = engine.device
    if device == "auto":
        resources = ray.cluster_resources() if ray.is_initialized() else {}
        device = "npu" if resources.get("NPU") else "cuda" if resources.get("GPU") else "cpu"
    if device == "npu":
        return {"resources": {"NPU": 1}, "num_cpus": 1}
    if device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": cpus}


@serve.deployment(name=ENGINE_NAME, graceful_shutdown_timeout_s=120, health_check_period_s=10)
class TTSEngineDeployment:
    def __init__(self, engine: dict, voices_dir: str | None, max_sample_bytes: int, chunk_s: float = 0.24) -> None:
        config = EngineConfig(**engine)
        engine = build_engine(config)
        engine.warm_up()  # the replica reports ready only after this
        self.engine = AsyncEngine(engine, on_step=EngineRecorder(RayMetrics(), engine.loaded).on_step)
        self.pipeline = SpeechPipeline(self.engine, max_streams=config.max_num_seqs, chunk_frames=chunk_frames(chunk_s))
        self.store = VoiceStore(voices_dir, max_sample_bytes)

    async def synthesize(self, request_id: str, segments: list[str], voice: dict, params: dict) -> AsyncIterator[bytes]:
        """Stream float32 PCM bytes. Voices load lazily from the shared voices directory, so a
        voice created through any ingress works on every engine replica."""
        voice_obj = Voice.model_validate(voice)
        if voice_obj.id not in self.pipeline.voices:
            await load_voice(self.pipeline, self.store, voice_obj)
        gen_params = GenerationParams(**{k: v for k, v in params.items() if v is not None})
        context = self.pipeline.voices[voice_obj.id]
        async for pcm in self.pipeline.stream(request_id, segments, context, gen_params):
            yield pcm.astype(np.float32).tobytes()

    async def forget_voice(self, voice_id: str) -> None:
        await self.pipeline.remove_voice(voice_id)

    def stats(self) -> dict:
        return {**self.engine.stats().__dict__, "pid": os.getpid(), "num_threads": threading.active_count()}

    def check_health(self) -> None:
        self.engine.check_health()


class RayBackend:
    """SpeechBackend over the engine deployment's handle."""

    def __init__(self, engine: DeploymentHandle) -> None:
        self.engine = engine

    async def is_ready(self) -> bool:
        """Ready when Serve's controller reports the engine deployment healthy (not while a
        replica is being replaced). Asks the controller, so it takes no engine slot."""
        try:
            status = await asyncio.to_thread(serve.status)
            app = status.applications[serve.get_replica_context().app_name]
            return app.deployments[ENGINE_NAME].status == "HEALTHY"
        except Exception:
            return False

    async def synthesize(self, request_id, segments, voice: Voice, params: SynthesisParams) -> AsyncIterator[np.ndarray]:
        stream = None
        try:
            stream = self.engine.options(stream=True).synthesize.remote(
                request_id, segments, voice.model_dump(), params.__dict__
            )
            async for data in stream:
                yield np.frombuffer(data, dtype=np.float32)
        except BackPressureError as e:
            raise Overloaded("engine queue is full") from e
        except NoStreamCapacity as e:
            raise Overloaded(str(e)) from e
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # cancel() re-raises a failed call's error
                    stream.cancel()

    async def add_voice(self, voice: Voice, clips) -> None:
        pass  # engine replicas load it from the voices directory on first use

    async def remove_voice(self, voice: Voice) -> None:
        await self.engine.forget_voice.remote(voice.id)


@serve.deployment(name="SpeechIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)  # I/O-bound
@serve.ingress()
class SpeechIngress:
    """The FastAPI app from serve.app.create_app, built per replica after __init__."""

    def __init__(self, engine: DeploymentHandle, server: dict) -> None:
        self.settings = ServerSettings(**server)
        self.store = VoiceStore(self.settings.voices_dir, self.settings.max_sample_bytes)
        self.backend = RayBackend(engine)

    def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.store, self.settings, RayMetrics(INGRESS_METRICS))


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (args from serve_config.yaml)."""
    cfg = AppArgs.model_validate(args or {})
    if cfg.server.get("voices_dir"):  # replicas do not share the driver's working directory
        cfg.server["voices_dir"] = os.path.abspath(cfg.server["voices_dir"])
    settings = ServerSettings(**cfg.server)
    engine = TTSEngineDeployment.options(
        ray_actor_options=engine_actor_options(cfg.engine, cfg.cpus_per_engine),
        max_ongoing_requests=cfg.engine.max_num_seqs,
        max_queued_requests=cfg.max_queued_requests,
    ).bind(cfg.engine.model_dump(), settings.voices_dir, settings.max_sample_bytes, settings.chunk_s)
    return SpeechIngress.bind(engine, cfg.server)

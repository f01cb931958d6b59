"""In-process backend (no Ray): one engine, its step thread and the speech pipeline in this
process, behind the same FastAPI app the Ray ingress serves. For development, tests and
single-card hosts; `python -m deployments.local --help`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import numpy as np

from models import Engine, EngineConfig, build_engine
from models.frontend.speech import SpeechPipeline, chunk_frames
from serve.backend import BackendError, Instances, SpeechJob, error_info, instance_kind
from serve.metrics import MetricsSink
from serve.settings import ServerSettings
from serve.voices import Voice, VoiceStore

from .metrics import EngineRecorder
from .voices import EngineVoices


class LocalBackend:
    """SpeechBackend over an in-process SpeechPipeline; `max_queued_requests` streams may wait
    for one of the engine's `max_num_seqs` rows (see models/frontend/admission.py)."""

    def __init__(self, pipeline: SpeechPipeline, store: VoiceStore) -> None:
        self.pipeline, self.voices = pipeline, EngineVoices(pipeline, store)
        self._ready = False
        self._follow: asyncio.Task | None = None

    @classmethod
    async def start(cls, config: EngineConfig, store: VoiceStore, max_queued_requests: int = 16,
                    metrics: MetricsSink | None = None, chunk_s: float = 0.24) -> LocalBackend:
        """Load the configured model and serve it (see `serve_engine`)."""
        return await cls.serve_engine(build_engine(config), store, max_queued_requests, metrics, chunk_s)

    @classmethod
    async def serve_engine(cls, engine: Engine, store: VoiceStore, max_queued_requests: int = 16,
                           metrics: MetricsSink | None = None, chunk_s: float = 0.24) -> LocalBackend:
        """Warm up and start an engine, load the stored voices; `metrics` gets the engine's metrics."""
        engine.warm_up()
        recorder = EngineRecorder(metrics, engine.loaded) if metrics is not None else None
        pipeline = SpeechPipeline.start(engine, max_queued_requests, chunk_frames(chunk_s),
                                        on_step=recorder.on_step if recorder else None)
        backend = cls(pipeline, store)
        await backend.voices.load_all()
        backend._follow = asyncio.create_task(backend.voices.follow_store())  # folders changed by hand too
        backend._ready = True
        return backend

    async def is_ready(self) -> bool:
        return self._ready and self.pipeline.engine.is_alive

    async def synthesize(self, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        try:
            voice = await self.voices.context(job.voice)
            async for pcm in self.pipeline.stream(job.request_id, list(job.segments), voice, job.params):
                yield pcm
        except Exception as e:
            raise BackendError(error_info(e, job.request_id)) from e

    async def add_voice(self, voice: Voice, clips: list[tuple[np.ndarray, str]]) -> None:
        try:
            await self.voices.add(voice, clips)
        except Exception as e:
            raise BackendError(error_info(e, f"voice {voice.id}")) from e

    async def remove_voice(self, voice: Voice) -> None:
        await self.voices.forget(voice.id)

    async def instances(self) -> Instances:
        engine = self.pipeline.engine
        return Instances(kind=instance_kind(engine.device_type), count=1, max_num_seqs=engine.max_num_seqs)

    def shutdown(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
        self.pipeline.shutdown()


def main(argv: list[str] | None = None) -> None:
    import asyncio

    import uvicorn

    from serve.app import create_app
    from serve.metrics import Metrics
    from serve.v2.grpc_service import start_grpc_server

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC protocol (0: off)")
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-queued-requests", type=int, default=16)
    args = ap.parse_args(argv)
    settings = ServerSettings()
    store = VoiceStore(settings.voices_dir, settings.max_sample_bytes)
    config = EngineConfig(model=args.model, device=args.device, max_num_seqs=args.max_num_seqs)

    async def serve() -> None:
        metrics = Metrics()
        backend = await LocalBackend.start(config, store, args.max_queued_requests, metrics, settings.chunk_s)
        app = create_app(backend, store, settings, metrics)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port))
        grpc_server = await start_grpc_server(app.state.v2, f"{args.host}:{args.grpc_port}") if args.grpc_port else None
        try:
            await server.serve()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            backend.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""In-process backend (no Ray): one engine, its step thread and the speech pipeline in this
process, behind the same FastAPI app the Ray ingress serves. For development, tests and
single-card hosts; `python -m deployments.local --help`."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import numpy as np

from models import AsyncEngine, EngineConfig, GenerationParams, build_engine
from models.speech import NoStreamCapacity, SpeechPipeline, chunk_frames
from serve.backend import Overloaded, SynthesisParams
from serve.settings import ServerSettings
from serve.voices import Voice, VoiceStore

from .metrics import EngineRecorder
from .voices import load_voices


class LocalBackend:
    """SpeechBackend over an in-process SpeechPipeline. At most `max_num_seqs + max_queued`
    streams are admitted; beyond that requests get Overloaded (429)."""

    def __init__(self, pipeline: SpeechPipeline) -> None:
        self.pipeline = pipeline
        self._ready = False

    @classmethod
    async def start(cls, config: EngineConfig, store: VoiceStore, max_queued: int = 16, metrics=None,
                    chunk_s: float = 0.24) -> LocalBackend:
        """Load, warm up and start the engine; `metrics` (serve.metrics.Metrics) gets engine metrics."""
        sync_engine = build_engine(config)
        sync_engine.warm_up()
        recorder = EngineRecorder(metrics, sync_engine.loaded) if metrics is not None else None
        engine = AsyncEngine(sync_engine, on_step=recorder.on_step if recorder else None)
        backend = cls(SpeechPipeline(engine, max_streams=config.max_num_seqs + max_queued, chunk_frames=chunk_frames(chunk_s)))
        await load_voices(backend.pipeline, store)
        backend._ready = True
        return backend

    async def is_ready(self) -> bool:
        return self._ready and self.pipeline.engine.is_alive

    async def synthesize(
        self, request_id: str, segments: list[str], voice: Voice, params: SynthesisParams
    ) -> AsyncIterator[np.ndarray]:
        given = {"seed": params.seed, "temperature": params.temperature, "top_k": params.top_k}
        gen_params = GenerationParams(speaker=params.speaker, **{k: v for k, v in given.items() if v is not None})
        try:
            async for pcm in self.pipeline.stream(request_id, segments, self.pipeline.voices.get(voice.id, ()), gen_params):
                yield pcm
        except NoStreamCapacity as e:
            raise Overloaded(str(e)) from e

    async def add_voice(self, voice: Voice, clips: list[tuple[np.ndarray, str]]) -> None:
        await self.pipeline.add_voice(voice.id, voice.speaker, clips)

    async def remove_voice(self, voice: Voice) -> None:
        await self.pipeline.remove_voice(voice.id)

    def shutdown(self) -> None:
        self.pipeline.engine.shutdown()


def main(argv: list[str] | None = None) -> None:
    import asyncio

    import uvicorn

    from serve.app import create_app
    from serve.metrics import Metrics

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    args = ap.parse_args(argv)
    settings = ServerSettings()
    store = VoiceStore(settings.voices_dir, settings.max_sample_bytes)
    config = EngineConfig(model=args.model, device=args.device, max_num_seqs=args.max_num_seqs)

    async def serve() -> None:
        metrics = Metrics()
        backend = await LocalBackend.start(config, store, metrics=metrics, chunk_s=settings.chunk_s)
        app = create_app(backend, store, settings, metrics)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port))
        try:
            await server.serve()
        finally:
            backend.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

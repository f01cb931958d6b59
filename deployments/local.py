"""The same API without Ray: one Replica in this process behind the same FastAPI app (and an
in-process Triton gRPC server). For development, tests and single-card hosts;
`python -m deployments.local --help`."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import uvicorn

from models import EngineConfig
from observability.metrics import Metrics, MetricsSink
from replica.config import ReplicaConfig
from replica.replica import Replica
from serve.app import create_app
from serve.settings import ServerSettings
from serve.v2.grpc_service import start_grpc_server
from stores.conversations import ConversationStore
from stores.voices import VoiceStore


async def start_replica(engine: EngineConfig, store: VoiceStore, config: ReplicaConfig | None = None,
                        metrics: MetricsSink | None = None, max_queued_requests: int = 16,
                        before_step=None, conversations: ConversationStore | None = None) -> Replica:
    """Build and warm up a replica (off the event loop), compute the stored voices' prefixes
    and follow the stores; `max_queued_requests` streams may wait for a row (admission.py)."""
    replica = await asyncio.to_thread(Replica.build, engine, store, config, metrics, max_queued_requests, before_step,
                                      conversations)
    await replica.voices.load_all()
    replica.start_background()  # folders changed by hand too
    return replica


@dataclass
class LocalServer:
    """The in-process server: one replica behind the FastAPI app on uvicorn, and Triton's gRPC
    server beside it. `run()` serves until `http.should_exit`, then stops both and the replica."""

    replica: Replica
    http: uvicorn.Server
    grpc: object | None  # grpc.aio.Server

    async def run(self) -> None:
        try:
            await self.http.serve()
        finally:
            if self.grpc is not None:
                await self.grpc.stop(grace=2)
            self.replica.shutdown()


async def start_local(engine: EngineConfig, settings: ServerSettings, host: str, port: int, grpc_port: int = 0,
                      config: ReplicaConfig | None = None, max_queued_requests: int = 16, before_step=None,
                      log_level: str = "info") -> LocalServer:
    """The one start-up of the in-process server (`make serve-local`, the tests' and the
    benchmarks' servers): the replica warmed up over the settings' stores, the app, the gRPC
    server (`grpc_port` 0: none); the HTTP server starts with `run()`."""
    metrics, store = Metrics(), settings.voice_store()
    replica = await start_replica(engine, store, config, metrics, max_queued_requests, before_step,
                                  settings.conversation_store())
    app = create_app(replica, store, settings, metrics)
    grpc_server = await start_grpc_server(app.state.v2, f"{host}:{grpc_port}") if grpc_port else None
    http = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    return LocalServer(replica, http, grpc_server)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC protocol (0: off)")
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-queued-requests", type=int, default=16)
    ap.add_argument("--chunk-s", type=float, default=ReplicaConfig().chunk_s, help="audio per streamed chunk")
    args = ap.parse_args(argv)
    engine = EngineConfig(model=args.model, device=args.device, max_num_seqs=args.max_num_seqs)

    async def serve() -> None:
        server = await start_local(engine, ServerSettings(), args.host, args.port, args.grpc_port,
                                   ReplicaConfig(chunk_s=args.chunk_s), args.max_queued_requests)
        await server.run()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

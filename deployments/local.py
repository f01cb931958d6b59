"""The same API without Ray: one Replica in this process behind the same FastAPI app (and an
in-process Triton gRPC server). For development, tests and single-card hosts;
`python -m deployments.local --help`."""

from __future__ import annotations

import argparse
import asyncio

from models import EngineConfig
from observability.metrics import Metrics, MetricsSink
from replica.config import ReplicaConfig
from replica.replica import Replica
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


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from serve.app import create_app
    from serve.settings import ServerSettings
    from serve.v2.grpc_service import start_grpc_server

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
    settings = ServerSettings()
    store = VoiceStore(settings.voices_dir)
    engine = EngineConfig(model=args.model, device=args.device, max_num_seqs=args.max_num_seqs)

    async def serve() -> None:
        metrics = Metrics()
        replica = await start_replica(engine, store, ReplicaConfig(chunk_s=args.chunk_s), metrics,
                                      args.max_queued_requests, conversations=settings.conversation_store())
        app = create_app(replica, store, settings, metrics)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port))
        grpc_server = await start_grpc_server(app.state.v2, f"{args.host}:{args.grpc_port}") if args.grpc_port else None
        try:
            await server.serve()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            replica.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""A real uvicorn server with an in-process replica on loopback, for HTTP tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import uvicorn

from deployments.local import start_replica
from models import EngineConfig
from models.engine import StepHook
from observability.metrics import Metrics
from replica.config import ReplicaConfig
from serve.app import create_app
from serve.settings import ServerSettings
from serve.v2.grpc_service import start_grpc_server
from stores.voices import VoiceStore
from tests.conftest import free_port


@contextlib.contextmanager
def local_server(voices_dir: str, engine: EngineConfig | None = None, max_queued_requests: int = 2,
                 before_step: StepHook | None = None, replica: ReplicaConfig | None = None, **settings):
    """Yields (base_url, replica); stops the server and the replica on exit. `before_step` is
    the engine's fault-injection seam. Triton's gRPC protocol is served too, on the port in
    `replica.grpc_port`."""
    config = engine or EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4)
    # Rows are the bound these tests count on; real-time admission (on in the product) has tests of its own.
    replica = replica or ReplicaConfig(realtime_admission=False)
    server_settings = ServerSettings(voices_dir=voices_dir, **settings)
    store = VoiceStore(voices_dir)
    port, grpc_port = free_port(), free_port()
    state = {}

    async def main():
        metrics = Metrics()
        served = await start_replica(config, store, replica, metrics, max_queued_requests, before_step,
                                     server_settings.conversation_store())
        state["replica"] = served
        served.grpc_port = grpc_port
        app = create_app(served, store, server_settings, metrics)
        grpc_server = await start_grpc_server(app.state.v2, f"127.0.0.1:{grpc_port}")
        state["server"] = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        await state["server"].serve()
        await grpc_server.stop(grace=2)
        served.shutdown()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not (state.get("server") and state["server"].started):
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", state["replica"]
    finally:
        state["server"].should_exit = True
        thread.join(10)

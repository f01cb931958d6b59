"""A real uvicorn server with an in-process replica on loopback, for HTTP tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from deployments.local import start_local
from models import EngineConfig
from models.engine import StepHook
from replica.config import ReplicaConfig
from serve.settings import ServerSettings
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
    port, grpc_port = free_port(), free_port()
    state = {}

    async def main():
        server = await start_local(config, server_settings, "127.0.0.1", port, grpc_port, replica,
                                   max_queued_requests, before_step, log_level="warning")
        server.replica.grpc_port = grpc_port
        state["replica"], state["server"] = server.replica, server.http
        await server.run()

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

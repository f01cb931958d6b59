"""A real uvicorn server with the in-process backend on loopback, for HTTP tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import uvicorn

from deployments.local import LocalBackend
from models import Engine, EngineConfig, build_engine
from serve.app import create_app
from serve.metrics import Metrics
from serve.settings import ServerSettings
from serve.v2.grpc_service import start_grpc_server
from serve.voices import VoiceStore
from tests.conftest import free_port


@contextlib.contextmanager
def local_server(voices_dir: str, engine: EngineConfig | None = None, max_queued_requests: int = 2,
                 on_engine: Callable[[Engine], None] | None = None, **settings):
    """Yields (base_url, backend); stops the server and the engine on exit. `on_engine` sees
    the engine before it starts serving (a seam for fault injection). Triton's gRPC protocol
    is served too, on the port in `backend.grpc_port`."""
    config = engine or EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4)
    server_settings = ServerSettings(voices_dir=voices_dir, **settings)
    store = VoiceStore(voices_dir)
    port, grpc_port = free_port(), free_port()
    state = {}

    async def main():
        metrics = Metrics()
        engine = build_engine(config)
        if on_engine is not None:
            on_engine(engine)
        backend = await LocalBackend.serve_engine(engine, store, max_queued_requests, metrics, server_settings.chunk_s)
        state["backend"] = backend
        backend.grpc_port = grpc_port
        app = create_app(backend, store, server_settings, metrics)
        grpc_server = await start_grpc_server(app.state.v2, f"127.0.0.1:{grpc_port}")
        state["server"] = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        await state["server"].serve()
        await grpc_server.stop(grace=2)
        backend.shutdown()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not (state.get("server") and state["server"].started):
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", state["backend"]
    finally:
        state["server"].should_exit = True
        thread.join(10)

"""`csm-serve wyoming` in this test's event loop, with a connected `wyoming` client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from wyoming.client import AsyncTcpClient

from clients.wyoming.api import WyomingSettings
from clients.wyoming.server import run
from tests.conftest import free_port


@contextlib.asynccontextmanager
async def wyoming_client(api_url: str, **settings) -> AsyncIterator[AsyncTcpClient]:
    """The Wyoming server in front of `api_url` on a free loopback port, and a client
    connected to it; both stop on exit."""
    port = free_port()
    server = asyncio.create_task(run(WyomingSettings(uri=f"tcp://127.0.0.1:{port}", api_url=api_url, **settings)))
    client = AsyncTcpClient("127.0.0.1", port)
    try:
        for attempt in range(200):  # until the server listens
            try:
                await client.connect()
                break
            except OSError:
                if attempt == 199 or server.done():
                    raise
                await asyncio.sleep(0.05)
        yield client
    finally:
        await client.disconnect()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

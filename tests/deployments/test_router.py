"""The engine deployment's request router (deployments/router.py): each new stream goes to the
least busy replica, also when two routers (the driver's handle and another deployment's)
send streams in turn. Serve's default two-random-choices router leaves a replica idle while
another holds two streams in 7 of 12 such rounds, so six rounds in a row with four streams on
four replicas fail it with probability 1 - (5/12)^6 > 0.99; a router that trusted its own
cached counts would not see the other router's streams."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ray import serve

from deployments.router import least_busy

pytestmark = pytest.mark.timeout(300)


@serve.deployment(num_replicas=4, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0},
                  request_router_config=least_busy())
class Holder:
    async def hold(self, seconds: float):
        yield os.getpid()  # where the stream runs, first
        await asyncio.sleep(seconds)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Relay:
    """Another caller, with a router of its own (as a second ingress has)."""

    def __init__(self, holder) -> None:
        self.holder = holder

    async def hold(self, seconds: float):
        async for item in self.holder.options(stream=True).hold.remote(seconds):
            yield item


def _home(handle, seconds: float) -> int:
    stream = handle.options(stream=True).hold.remote(seconds)
    pid = next(iter(stream))
    for _ in stream:  # held until it ends
        pass
    return pid


def test_streams_go_to_the_least_busy_replica_from_every_router(ray_serve):
    relay = serve.run(Relay.bind(Holder.bind()), name="router-check", route_prefix=None)
    holder = serve.get_deployment_handle("Holder", app_name="router-check")
    try:
        _home(holder, 0.0), _home(relay, 0.0)  # both routers know the four replicas
        rounds = []
        with ThreadPoolExecutor(4) as pool:
            for _ in range(6):
                streams = []
                for i in range(4):  # one after another, from the two callers in turn
                    streams.append(pool.submit(_home, (holder, relay)[i % 2], 2.0))
                    time.sleep(0.3)
                rounds.append([s.result(timeout=60) for s in streams])
        assert all(len(set(pids)) == 4 for pids in rounds), rounds
        assert len({pid for pids in rounds for pid in pids}) == 4
    finally:
        serve.delete("router-check")

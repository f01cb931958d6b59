"""The engine deployment's request router (deployments/router.py): each new stream goes to the
least busy replica, also when two routers (the driver's handle and another deployment's)
send streams in turn. Serve's default two-random-choices router leaves a replica idle while
another holds two streams in 7 of 12 such rounds, so six rounds in a row with four streams on
four replicas fail it with probability 1 - (5/12)^6 > 0.99; a router that trusted its own
cached counts would not see the other router's streams. A conversation's turns all go to
one replica (where its prefix is cached), different conversations to different ones, and a
turn whose replica is full goes to another."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from ray import serve

from contract.job import RoutingKey
from deployments.router import by_headroom, routing_stats

pytestmark = pytest.mark.timeout(300)


@serve.deployment(num_replicas=4, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0},
                  request_router_config=by_headroom())
class Holder:
    async def hold(self, seconds: float):
        yield os.getpid()  # where the stream runs, first
        await asyncio.sleep(seconds)

    async def turn(self, job: Turn):
        yield os.getpid()
        await asyncio.sleep(job.seconds)


@serve.deployment(num_replicas=3, max_ongoing_requests=8, ray_actor_options={"num_cpus": 0},
                  request_router_config=by_headroom())
class CapacityHolder:
    """Reports a real-time capacity of two streams (as SpeechReplica reports its learned one)."""

    def record_routing_stats(self) -> dict[str, int]:
        return routing_stats(capacity=2, batch_streams=0)

    async def turn(self, job: Turn):
        yield os.getpid()
        await asyncio.sleep(job.seconds)


@dataclass(frozen=True)
class Turn:
    """Stands for a SpeechJob: the router reads the first argument's `routing` key (its
    conversation)."""

    conversation: str | None
    seconds: float = 0.0

    @property
    def routing(self) -> RoutingKey:
        return RoutingKey("interactive", self.conversation)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Relay:
    """Another caller, with a router of its own (as a second ingress has)."""

    def __init__(self, holder) -> None:
        self.holder = holder

    async def hold(self, seconds: float):
        async for item in self.holder.options(stream=True).hold.remote(seconds):
            yield item


def _home(handle, seconds: float | Turn, method: str = "hold") -> int:
    stream = getattr(handle.options(stream=True), method).remote(seconds)
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


def test_a_conversation_keeps_its_replica_until_it_is_full(ray_serve):
    serve.run(Holder.bind(), name="affinity-check", route_prefix=None)
    holder = serve.get_deployment_handle("Holder", app_name="affinity-check")
    try:
        _home(holder, 0.0)
        homes = {c: {_home(holder, Turn(c), "turn") for _ in range(6)} for c in (f"conv_{i}" for i in range(8))}
        assert all(len(pids) == 1 for pids in homes.values()), homes  # every turn where the one before ran
        assert len({next(iter(p)) for p in homes.values()}) >= 2, homes  # conversations spread over replicas
        assert len({_home(holder, Turn(None), "turn") for _ in range(12)}) >= 2  # no conversation: least busy
        (home,) = homes["conv_0"]
        with ThreadPoolExecutor(5) as pool:  # four long turns fill its replica (max_ongoing_requests 4)...
            held = [pool.submit(_home, holder, Turn("conv_0", 3.0), "turn") for _ in range(4)]
            time.sleep(1.0)
            overflow = _home(holder, Turn("conv_0"), "turn")  # ...so the next goes elsewhere, at once
            assert [h.result(timeout=60) for h in held] == [home] * 4
        assert overflow != home
    finally:
        serve.delete("affinity-check")


def test_a_conversation_leaves_its_replica_when_it_has_no_real_time_headroom(ray_serve):
    """Its replica reports room for two streams (routing stats) though it has eight slots: the
    third turn at once goes to another replica, not to a full one's admission."""
    serve.run(CapacityHolder.bind(), name="headroom-check", route_prefix=None)
    holder = serve.get_deployment_handle("CapacityHolder", app_name="headroom-check")
    try:
        _home(holder, Turn("conv_h"), "turn")
        time.sleep(2.0)  # every replica's routing stats reach the router (polled every 0.5 s)
        home = _home(holder, Turn("conv_h"), "turn")
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(_home, holder, Turn("conv_h", 3.0), "turn") for _ in range(2)]
            time.sleep(1.0)
            overflow = _home(holder, Turn("conv_h"), "turn")
            assert [h.result(timeout=60) for h in held] == [home] * 2  # within its headroom: home
        assert overflow != home
    finally:
        serve.delete("headroom-check")

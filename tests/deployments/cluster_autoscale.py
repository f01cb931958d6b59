"""Autoscaling on the simulated cluster (run from cluster_check.py): Serve's ongoing-requests
policy scales the engine from 1 replica to one per card under sustained load and back to 1 when
it ends, load spreads (every replica batches), and no admitted request is lost on the way up or
down (a replica being removed finishes its streams first)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.deployments.cluster_check import engine_states, long_speak, replica_stats, wait_running


def _client(url: str, stop: threading.Event, results: list, seed: int) -> None:
    """Closed loop: the next request as soon as the previous one ended, until told to stop."""
    while not stop.is_set():
        result = long_speak(url, seed, seconds=2.0)
        results.append(result)
        seed += 100
        if result["outcome"].startswith("http_"):
            time.sleep(0.5)  # refused (429): back off as Retry-After asks


def drain_on_downscale(sim, voices_dir: str) -> dict:
    """Twelve long streams over 4 replicas (the router favours the less loaded: about three each),
    then the engine is scaled down to 1 replica while they run: the 3 replicas Serve stops
    finish their streams before they go (what an autoscaling downscale does to a busy replica)."""
    from ray import serve

    from deployments.sim_cluster import app_args, deploy

    deploy(app_args(voices_dir), {"num_replicas": 4})
    wait_running(4)
    time.sleep(2)  # the router has heard of every replica
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    with ThreadPoolExecutor(12) as pool:
        streams = []
        for i in range(12):  # staggered: a simultaneous burst can meet Serve's queue limit
            streams.append(pool.submit(long_speak, sim.url, 7000 + i, 5.0))
            time.sleep(0.15)
        time.sleep(1.0)
        per_replica = sorted(s.engine.num_running for s in replica_stats(handle).values())
        deploy(app_args(voices_dir), {"num_replicas": 1}, blocking=False)
        stopping = 0
        while not all(f.done() for f in streams):
            stopping = max(stopping, engine_states().get("STOPPING", 0))
            time.sleep(0.25)
        results = [f.result() for f in streams]
    return {"streams_per_replica": per_replica, "max_stopping": stopping,
            "outcomes": [r["outcome"] for r in results], "running_after_s": round(wait_running(1), 1)}


def autoscale(sim, voices_dir: str, cards: int, clients: int = 8) -> dict:
    """`clients` closed-loop streams (target 1 ongoing request per replica): time until every
    card serves, each replica's average batch over the load, then the time Serve takes to
    come back to 1 replica once the load is gone."""
    from ray import serve

    from deployments.sim_cluster import app_args, autoscaling, deploy

    deploy(app_args(voices_dir), {"autoscaling_config": autoscaling(cards, downscale_s=4.0)})
    wait_running(1)
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    before = {pid: (s.engine.num_steps, s.engine.num_frames_total) for pid, s in replica_stats(handle, 8).items()}
    stop, results, timeline = threading.Event(), [], []
    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for i in range(clients):
            pool.submit(_client, sim.url, stop, results, 1000 + i)
        full_at = None
        while time.monotonic() - t0 < 150:
            running = engine_states().get("RUNNING", 0)
            if not timeline or timeline[-1][1] != running:
                timeline.append((round(time.monotonic() - t0, 1), running))
            if running == cards and full_at is None:
                full_at = time.monotonic()
            if full_at is not None and time.monotonic() - full_at > 10:  # every card busy for 10 s
                break
            time.sleep(0.5)
        under_load = replica_stats(handle)  # the clients use half the slots: these calls find room
        stop.set()
    batch = {}
    for pid, s in under_load.items():
        steps0, frames0 = before.get(pid, (0, 0))
        batch[pid] = round((s.engine.num_frames_total - frames0) / max(1, s.engine.num_steps - steps0), 2)
    down_t0 = time.monotonic()  # idle now: Serve goes back to min_replicas after downscale_s
    back_in_s = wait_running(1, timeout_s=120)
    return {"timeline": timeline, "to_full_s": round(full_at - t0, 1) if full_at else -1,
            "outcomes": sorted({r["outcome"] for r in results}), "requests": len(results),
            "complete": sum(r["outcome"] == "complete" for r in results),
            "average_batch": list(batch.values()),
            "back_to_1_s": round(time.monotonic() - down_t0, 1) if back_in_s >= 0 else -1,
            "status_after": httpx.get(sim.url + "/v2/health/ready", timeout=10).status_code}

"""Autoscaling on the simulated cluster (run from cluster_check.py): Serve's ongoing-requests
policy scales the engine from 1 replica to one per card under sustained load and back to 1 when
it ends, load spreads (every replica batches), and no admitted request is lost on the way up or
down (a replica being removed finishes its streams first)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.deployments.cluster_check import long_speak, replica_stats, wait_running


def _states() -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications["csm"].deployments["TTSEngine"].replica_states)


def _client(url: str, stop: threading.Event, results: list, seed: int) -> None:
    """Closed loop: the next request as soon as the previous one ended, until told to stop."""
    while not stop.is_set():
        result = long_speak(url, seed, seconds=2.0)
        results.append(result)
        seed += 100
        if result["outcome"].startswith("http_"):
            time.sleep(0.5)  # refused (429): back off as Retry-After asks


def autoscale(sim, voices_dir: str, cards: int, clients: int = 8) -> dict:
    """`clients` closed-loop streams (target 1 ongoing request per replica): time until every
    card serves, each replica's average batch over the load, then three long streams while
    Serve scales back down to 1, and the time it took."""
    from deployments.sim_cluster import app_args, autoscaling, deploy
    from ray import serve

    deploy(app_args(voices_dir), {"autoscaling_config": autoscaling(cards, downscale_s=4.0)})
    wait_running(1)
    handle = serve.get_deployment_handle("TTSEngine", app_name="csm")
    before = {pid: (s["num_steps"], s["num_frames_total"]) for pid, s in replica_stats(handle, 8).items()}
    stop, results, timeline = threading.Event(), [], []
    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for i in range(clients):
            pool.submit(_client, sim.url, stop, results, 1000 + i)
        full_at = None
        while time.monotonic() - t0 < 150:
            running = _states().get("RUNNING", 0)
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
        batch[pid] = round((s["num_frames_total"] - frames0) / max(1, s["num_steps"] - steps0), 2)
    # three long streams (so Serve keeps 3 replicas, then 1): a replica removed while it holds
    # one finishes it before it stops; the running replicas' own count tells how many it held
    down_t0, on_stopping = time.monotonic(), -1
    with ThreadPoolExecutor(3) as pool:
        draining = [pool.submit(long_speak, sim.url, 5000 + i, 8.0) for i in range(3)]
        while not all(f.done() for f in draining):
            if on_stopping < 0 and _states().get("STOPPING", 0):
                in_flight = sum(not f.done() for f in draining)
                running_here = sum(s["num_running"] for s in replica_stats(handle, 20).values())
                on_stopping = max(0, in_flight - running_here)
            time.sleep(0.25)
        drain_results = [f.result() for f in draining]
    back_in_s = wait_running(1, timeout_s=120)
    return {"timeline": timeline, "to_full_s": round(full_at - t0, 1) if full_at else -1,
            "outcomes": sorted({r["outcome"] for r in results}), "requests": len(results),
            "complete": sum(r["outcome"] == "complete" for r in results),
            "average_batch": list(batch.values()), "drain_outcomes": [r["outcome"] for r in drain_results],
            "streams_on_a_stopping_replica": on_stopping,
            "back_to_1_s": round(time.monotonic() - down_t0, 1) if back_in_s >= 0 else -1,
            "status_after": httpx.get(sim.url + "/v2/health/ready", timeout=10).status_code}

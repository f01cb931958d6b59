"""Autoscaling on the simulated cluster (run from cluster_check.py): Serve's ongoing-requests
policy (target 2 per replica) scales the engine from 1 replica to one per card under sustained
load, load spreads (every replica batches), and no admitted request is lost on the way up;
then the load falls to four long streams, the autoscaler itself decides to go from 4 replicas
to 2 while they run, and the streams on the replicas it removes finish in full before those
replicas stop; with no load it comes back to 1."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.deployments.cluster_check import engine_states, long_speak, replica_stats, stream_homes, wait_running


def _client(url: str, stop: threading.Event, results: list, seed: int) -> None:
    """Closed loop: the next request as soon as the previous one ended, until told to stop."""
    while not stop.is_set():
        result = long_speak(url, seed, seconds=2.0)
        results.append(result)
        seed += 100
        if result["outcome"].startswith("http_"):
            time.sleep(0.5)  # refused (429): back off as Retry-After asks


def _scale_down_with_streams(url: str, handle, clients_done) -> dict:
    """Four long streams started as the closed-loop clients stop: 4 ongoing requests at target
    2 is 2 replicas, so after downscale_delay_s the autoscaler stops two of the four while the
    streams run. Where the streams ran (each replica holds one, so a stopped replica held one), the lowest RUNNING count and the STOPPING replicas seen while every
    stream was still live, and each stream's outcome."""
    ids = [f"down-{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        clients_done()
        streams = []
        for i, rid in enumerate(ids):
            # staggered so each routing choice sees the streams before it: the least busy
            # replica takes each (deployments/router.py), so each of the four holds one
            streams.append(pool.submit(long_speak, url, 9000 + i, 30.0, rid))  # outlasts downscale_s
            time.sleep(0.6)
        homes: dict[str, int] = {}
        deadline = time.monotonic() + 5
        while len(homes) < len(ids) and time.monotonic() < deadline:  # each as soon as it runs
            homes.update(stream_homes(handle, ids))
            time.sleep(0.2)
        fewest_running, most_stopping = 4, 0
        while not any(f.done() for f in streams):  # every stream still live
            states = engine_states()
            fewest_running = min(fewest_running, states.get("RUNNING", 0))
            most_stopping = max(most_stopping, states.get("STOPPING", 0))
            time.sleep(0.25)
        results = [f.result() for f in streams]
    return {"replicas_holding": len(set(homes.values())), "placed": len(homes),
            "fewest_running_while_live": fewest_running, "most_stopping_while_live": most_stopping,
            "outcomes": [r["outcome"] for r in results]}


def autoscale(sim, voices_dir: str, cards: int, clients: int = 8) -> dict:
    """`clients` closed-loop streams (target 2 ongoing requests per replica): time until every
    card serves, each replica's average batch over the load; then the scale-down with live
    streams; then the time Serve takes to come back to 1 replica once the load is gone."""
    from ray import serve

    from deployments.sim_cluster import app_args, autoscaling, deploy

    # downscale_s: longer than the closed-loop clients take to finish plus the four streams to
    # start, so Serve decides to scale down only once the streams run (4 ongoing: 2 replicas)
    deploy(app_args(voices_dir), {"autoscaling_config": autoscaling(cards, target=2.0, downscale_s=10.0)})
    wait_running(1)
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    before = {pid: (s.engine.num_steps, s.engine.num_frames_total) for pid, s in replica_stats(handle).items()}
    stop, results, timeline = threading.Event(), [], []
    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        loops = [pool.submit(_client, sim.url, stop, results, 1000 + i) for i in range(clients)]
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
        under_load = replica_stats(handle)

        def clients_done() -> None:
            stop.set()
            for f in loops:
                f.result()

        down = _scale_down_with_streams(sim.url, handle, clients_done)
    batch = {}
    for pid, s in under_load.items():
        steps0, frames0 = before.get(pid, (0, 0))
        batch[pid] = round((s.engine.num_frames_total - frames0) / max(1, s.engine.num_steps - steps0), 2)
    down_t0 = time.monotonic()  # idle now: Serve goes back to min_replicas after downscale_s
    back_in_s = wait_running(1, timeout_s=120)
    return {"timeline": timeline, "to_full_s": round(full_at - t0, 1) if full_at else -1,
            "outcomes": sorted({r["outcome"] for r in results}), "requests": len(results),
            "complete": sum(r["outcome"] == "complete" for r in results),
            "average_batch": list(batch.values()), "scale_down_with_streams": down,
            "back_to_1_s": round(time.monotonic() - down_t0, 1) if back_in_s >= 0 else -1,
            "status_after": httpx.get(sim.url + "/v2/health/ready", timeout=10).status_code}

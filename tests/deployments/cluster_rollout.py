"""A rolling update under load on the simulated cluster (run from cluster_check.py): two engine
replicas serve long streams, then a changed Serve config (another max_num_seqs, so new args
and new replicas) is deployed as `serve deploy` / KubeRay's in-place update does. With
max_surge_percent 100 the new replicas start on the free cards before the old ones drain: no
admitted stream is cut, readiness never drops, and new requests reach the new replicas."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.deployments.cluster_check import engine_states, long_speak, replica_stats, speak, wait_running


def _sample_ready(url: str, stop: threading.Event, statuses: list) -> None:
    while not stop.is_set():
        try:
            r = httpx.get(url + "/v2/health/ready", timeout=10)
            statuses.append(r.status_code if r.status_code == 200 else f"{r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            statuses.append(type(e).__name__)
        time.sleep(0.25)


def _sample_states(stop: threading.Event, seen: list) -> None:
    """(replicas in any state, replicas RUNNING) every 0.25 s, from before the deploy call
    (which returns only once the controller has taken the config) until the streams end."""
    while not stop.is_set():
        try:
            states = engine_states()
        except KeyError:  # the application is being rebuilt from the new config
            time.sleep(0.25)
            continue
        seen.append((round(time.monotonic(), 2), sum(states.values()), states.get("RUNNING", 0)))
        time.sleep(0.25)


def rolling_update(sim, voices_dir: str) -> dict:
    from ray import serve

    from deployments.sim_cluster import app_args, deploy

    options = {"num_replicas": 2, "max_surge_percent": 100}
    deploy(app_args(voices_dir, max_num_seqs=4), options)
    wait_running(2)
    time.sleep(2)  # the routers have heard of both replicas
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    old = {pid for pid, s in replica_stats(handle).items() if s.engine.num_kv_slots_total == 4}
    stop, ready = threading.Event(), []
    sampler = threading.Thread(target=_sample_ready, args=(sim.url, stop, ready), daemon=True)
    sampler.start()
    states_stop, states = threading.Event(), []
    with ThreadPoolExecutor(4) as pool:
        streams = []
        for i in range(4):  # long enough to outlast the controller taking the new config
            streams.append(pool.submit(long_speak, sim.url, 3000 + i, 20.0, f"roll-{i}"))
            time.sleep(0.2)
        time.sleep(1.0)
        started = time.monotonic()
        states_sampler = threading.Thread(target=_sample_states, args=(states_stop, states), daemon=True)
        states_sampler.start()
        deploy(app_args(voices_dir, max_num_seqs=3), options, blocking=False)
        deployed_s = time.monotonic() - started
        results = [f.result() for f in streams]
        states_stop.set()
        states_sampler.join()
        rolled_in_s = wait_running(2)
    stop.set()
    sampler.join()
    most_replicas = max((total for _, total, _ in states), default=0)
    fewest_running = min((running for _, _, running in states), default=0)
    after = replica_stats(handle)
    return {"outcomes": [r["outcome"] for r in results], "ready": sorted(set(ready), key=str),
            "ready_samples": len(ready), "most_replicas_during": most_replicas,
            "fewest_running_during": fewest_running, "deploy_returned_s": round(deployed_s, 1),
            "streams_ended_s": [round(r["end"] - started, 1) for r in results],
            "states": [(round(t - started, 1), total, running)  # (s after the deploy call, replicas, running) at each change
                       for i, (t, total, running) in enumerate(states) if i == 0 or states[i - 1][1:] != (total, running)],
            "rolled_in_s": round(time.monotonic() - started, 1) if rolled_in_s >= 0 else -1,
            "old_pids": sorted(old), "new": [{"pid": pid, "slots": s.engine.num_kv_slots_total}
                                             for pid, s in after.items()],
            "statuses_after": [speak(sim.url, 400 + i) for i in range(3)]}

"""A rolling update under load on the simulated cluster (run from cluster_check.py): two engine
replicas serve long streams, then a changed Serve config (another max_num_seqs, so new args
and new replicas) is deployed as `serve deploy` / KubeRay's in-place update does. With
max_surge_percent 100 the new replicas start on the free cards before the old ones drain: no
admitted stream is cut (listeners keep streaming until the rollout is over, so some are in
flight on the old replicas as they drain), readiness never drops, and new requests reach the
new replicas."""

from __future__ import annotations

import threading
import time
from collections import Counter
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
    """(time, replicas in any state, RUNNING, STOPPING) every 0.25 s, from before the deploy
    call (which returns only once the controller has taken the config) until the old replicas
    are gone; it rides out the app rebuild."""
    while not stop.is_set():
        try:
            states = engine_states()
        except KeyError:  # the application is being rebuilt from the new config
            time.sleep(0.25)
            continue
        seen.append((time.monotonic(), sum(states.values()), states.get("RUNNING", 0), states.get("STOPPING", 0)))
        time.sleep(0.25)


def _keep_streaming(url: str, worker: int, rolled: threading.Event, streams: list) -> None:
    """One listener after another until the rollout is over, so that streams are in flight on
    the old replicas whenever the controller starts the new ones and drains the old (a fixed
    number of streams can end first: audio runs faster than real time, and the controller takes
    the config after 10-20 s)."""
    for i in range(1000):
        started = time.monotonic()
        result = long_speak(url, 3000 + 10 * worker + i, 20.0, f"roll-{worker}-{i}")
        streams.append({"start": started, **result})
        if rolled.is_set():
            return


def _rolled_in(handle, timeout_s: float = 240) -> bool:
    """Only the new replicas (3 slots each) answer, and no old one is left in any state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = replica_stats(handle)
        if (len(stats) == 2 and all(s.engine.num_kv_slots_total == 3 for s in stats.values())
                and sum(engine_states().values()) == 2):
            return True
        time.sleep(0.5)
    return False


def rolling_update(sim, voices_dir: str) -> dict:
    from ray import serve

    from deployments.sim_cluster import app_args, deploy

    options = {"num_replicas": 2, "max_surge_percent": 100}
    deploy(app_args(voices_dir, max_num_seqs=4), options)
    wait_running(2)
    time.sleep(2)  # the routers have heard of both replicas
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    old = {pid for pid, s in replica_stats(handle).items() if s.engine.num_kv_slots_total == 4}
    stop, ready, states, streams, rolled = threading.Event(), [], [], [], threading.Event()
    samplers = [threading.Thread(target=_sample_ready, args=(sim.url, stop, ready), daemon=True),
                threading.Thread(target=_sample_states, args=(stop, states), daemon=True)]
    for sampler in samplers:
        sampler.start()
    with ThreadPoolExecutor(4) as pool:
        workers = []
        for worker in range(4):
            workers.append(pool.submit(_keep_streaming, sim.url, worker, rolled, streams))
            time.sleep(0.2)
        time.sleep(1.0)
        started = time.monotonic()
        deploy(app_args(voices_dir, max_num_seqs=3), options, blocking=False)
        deployed_s = time.monotonic() - started
        done = _rolled_in(handle)
        rolled_in_s = time.monotonic() - started
        rolled.set()
        for w in workers:
            w.result()
    stop.set()
    for sampler in samplers:
        sampler.join()
    draining = [t for t, _, _, stopping in states if stopping]
    first_drain = draining[0] if draining else float("inf")
    after = replica_stats(handle)
    return {"outcomes": dict(Counter(s["outcome"] for s in streams)),
            "first_outcomes": [s["outcome"] for s in sorted(streams, key=lambda s: s["start"])[:4]],
            "live_when_draining": [s["outcome"] for s in streams if s["start"] < first_drain < s["end"]],
            "ready": sorted(set(ready), key=str), "ready_samples": len(ready),
            "most_replicas_during": max((total for _, total, _, _ in states), default=0),
            "fewest_running_during": min((running for _, _, running, _ in states), default=0),
            "deploy_returned_s": round(deployed_s, 1), "first_drain_s": round(first_drain - started, 1),
            "states": [(round(t - started, 1), *rest)  # (s after the deploy call, replicas, running, stopping) at each change
                       for i, (t, *rest) in enumerate(states) if i == 0 or states[i - 1][1:] != tuple(rest)],
            "rolled_in_s": round(rolled_in_s, 1) if done else -1,
            "old_pids": sorted(old), "new": [{"pid": pid, "slots": s.engine.num_kv_slots_total}
                                             for pid, s in after.items()],
            "statuses_after": [speak(sim.url, 400 + i) for i in range(3)]}

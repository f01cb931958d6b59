"""Run as a script by test_cluster.py (Ray's multi-node test cluster needs a process of its
own): 2 nodes x 2 simulated Ascend cards. Prints one JSON line with what it saw."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def placement(handle, calls: int = 40) -> dict[int, dict]:
    """pid -> {card, node_id} of every engine replica the router reached."""
    with ThreadPoolExecutor(3) as pool:  # within the slots (3+ replicas x 4): no backpressure
        stats = list(pool.map(lambda _: handle.stats.remote().result(timeout_s=60), range(calls)))
    return {s["pid"]: {"card": s["card"], "node_id": s["node_id"]} for s in stats}


def speak(url: str, seed: int) -> int:
    body = {"model": "tts-1", "voice": "alloy", "input": "On a simulated card.", "response_format": "pcm",
            "seed": seed, "max_audio_seconds": 0.48}
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=120).status_code


def main(voices_dir: str, port: int) -> dict:
    from ray import serve

    from deployments.sim_cluster import app_args, deploy, sim_cluster

    out: dict = {}
    with sim_cluster(nodes=2, cards_per_node=2, http_port=port) as sim:
        out["nodes"] = [n.node_id for n in sim.worker_nodes]
        deploy(app_args(voices_dir), {"num_replicas": 3})
        handle = serve.get_deployment_handle("TTSEngine", app_name="csm")
        out["placement"] = list(placement(handle).values())
        out["statuses"] = [speak(sim.url, i) for i in range(3)]
        deploy(app_args(voices_dir), {"num_replicas": 5}, blocking=False)  # one more than the 4 cards
        deadline = time.time() + 180
        while time.time() < deadline:
            states = serve.status().applications["csm"].deployments["TTSEngine"].replica_states
            if states.get("RUNNING", 0) == 4 and sum(states.values()) == 5:
                break
            time.sleep(1)
        time.sleep(3)  # the fifth stays pending
        out["states_over_capacity"] = dict(serve.status().applications["csm"].deployments["TTSEngine"].replica_states)
        out["placement_over_capacity"] = list(placement(handle, 60).values())
        out["statuses_over_capacity"] = [speak(sim.url, 10 + i) for i in range(3)]
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], int(sys.argv[2]))))

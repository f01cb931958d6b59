"""Run as a script by test_cluster.py (Ray's multi-node test cluster needs a process of its
own): 2 nodes x 2 simulated Ascend cards. Prints one JSON line with what it saw."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from deployments.sim_cluster import engine_states, wait_running


def replica_stats(handle) -> dict[int, dict]:
    """pid -> stats of every engine replica the handle's router knows (Serve's broadcast: one
    call each, busy or not); one that does not answer (on a lost node) is left out."""
    stats = handle.broadcast("stats").results(timeout_s=60, return_exceptions=True)
    return {s.pid: s for s in stats if not isinstance(s, BaseException)}


def placement(handle) -> dict[int, dict]:
    """pid -> {card, node_id} of every engine replica."""
    return {pid: {"card": s.card, "node_id": s.node_id} for pid, s in replica_stats(handle).items()}


def speak(url: str, seed: int) -> int:
    body = {"model": "tts-1", "voice": "alloy", "input": "On a simulated card.", "response_format": "pcm",
            "seed": seed, "max_audio_seconds": 0.48}
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=120).status_code


def long_speak(url: str, seed: int, seconds: float = 8.0, request_id: str | None = None) -> dict:
    """One streamed request: complete, cut (the body ended early or broke), or refused.
    `request_id` (sent as x-request-id) finds it in a replica's stats().streams."""
    body = {"model": "tts-1", "voice": "alloy", "input": "A long answer to keep the card busy. " * 8,
            "response_format": "pcm", "seed": seed, "max_audio_seconds": seconds}
    headers = {"x-request-id": request_id} if request_id else {}
    received = 0
    try:
        with httpx.stream("POST", url + "/v1/audio/speech", json=body, headers=headers, timeout=120) as r:
            if r.status_code != 200:
                return {"outcome": f"http_{r.status_code}", "end": time.monotonic(), "id": request_id}
            for chunk in r.iter_bytes():
                received += len(chunk)
    except httpx.HTTPError:
        return {"outcome": "cut", "end": time.monotonic(), "bytes": received, "id": request_id}
    complete = received == round(seconds * 24_000) * 2
    return {"outcome": "complete" if complete else "cut", "end": time.monotonic(), "bytes": received, "id": request_id}


def stream_homes(handle, ids: list[str]) -> dict[str, int]:
    """request id -> pid of the replica serving it."""
    return {rid: pid for pid, s in replica_stats(handle).items() for rid in s.streams if rid in ids}


def voices_across(url: str, handle, replicas: int) -> dict:
    """A custom voice created through the API speaks on every engine replica (loaded there from
    the shared store on first use; the same seed gives the same audio on each), a deleted one is
    forgotten by every replica without any request reaching them, and a voice the model cannot
    take is refused at upload and not kept."""
    from tests.conftest import wav_bytes

    def upload(name: str, transcript: str) -> httpx.Response:
        return httpx.post(url + "/v1/audio/voices", data={"name": name, "transcript": transcript}, timeout=120,
                          files={"audio_sample": ("s.wav", wav_bytes(1.0), "audio/wav")})

    def speak_as(voice: str) -> httpx.Response:
        body = {"model": "tts-1", "voice": voice, "input": "Everywhere.", "response_format": "pcm", "seed": 3,
                "max_audio_seconds": 0.48}
        return httpx.post(url + "/v1/audio/speech", json=body, timeout=120)

    too_long = upload("Too long", "語" * 2000)
    voice_id = upload("Everywhere", "A voice for every card.").json()["id"]
    bodies, holders = [], {}
    for _ in range(6):  # rounds of one request per slot, until every replica has spoken it
        with ThreadPoolExecutor(replicas * 2) as pool:
            responses = list(pool.map(lambda _: speak_as(voice_id), range(replicas * 2)))
        bodies += [np.frombuffer(r.content, "<i2").astype(int) for r in responses if r.status_code == 200]
        holders = {pid: voice_id in s.voices for pid, s in replica_stats(handle).items()}
        if len(holders) == replicas and all(holders.values()):
            break
    deleted = httpx.delete(f"{url}/v1/audio/voices/{voice_id}", timeout=60).status_code
    t0, forgotten_in_s = time.monotonic(), -1.0
    while time.monotonic() - t0 < 10:
        after = replica_stats(handle)
        if len(after) == replicas and not any(voice_id in s.voices for s in after.values()):
            forgotten_in_s = round(time.monotonic() - t0, 2)
            break
        time.sleep(0.2)
    names = [v["name"] for v in httpx.get(url + "/v1/audio/voices", timeout=30).json()["data"]]
    return {"too_long_status": too_long.status_code, "too_long_kept": "Too long" in names,
            "holders": list(holders.values()), "spoken": len(bodies),
            # same codes everywhere; PCM equal up to float rounding of batched Mimi decodes (1-2 LSB)
            "max_pcm_difference": max(int(np.abs(b - bodies[0]).max()) for b in bodies) if bodies else -1, "deleted_status": deleted,
            "forgotten_everywhere_in_s": forgotten_in_s, "speak_deleted_status": speak_as(voice_id).status_code}


def node_loss(sim, handle, voices_dir: str) -> dict:
    """Two engine replicas, one per card node (max_replicas_per_node: 1), six long streams
    (three each: each goes to the least busy replica), then one node is removed (no graceful shutdown): its
    streams end within seconds, the others finish, readiness stays up (sampled until Serve
    reports the lost replica gone); the replacement waits for a card on a node of its own
    until a new node joins (as KubeRay replaces a lost worker pod), then serves there, and
    the next requests succeed."""
    from deployments.sim_cluster import app_args, deploy

    deploy(app_args(voices_dir), {"num_replicas": 2, "max_replicas_per_node": 1})
    wait_running(2)
    time.sleep(2)  # the routers have heard of both replicas
    before = replica_stats(handle)
    nodes = {s.node_id for s in before.values()}
    node_of = {pid: s.node_id for pid, s in before.items()}
    victim = next(n for n in sim.worker_nodes if n.node_id in nodes)
    ids = [f"loss-{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        streams = []
        for i, rid in enumerate(ids):  # staggered: a simultaneous burst can meet Serve's queue limit
            streams.append(pool.submit(long_speak, sim.url, 100 + i, 8.0, rid))
            time.sleep(0.1)
        time.sleep(1.5)  # every stream is under way
        homes = stream_homes(handle, ids)
        served_on = {rid: node_of.get(pid) for rid, pid in homes.items()}
        killed_at = time.monotonic()
        sim.cluster.remove_node(victim, allow_graceful=False)
        ready = []
        while not all(f.done() for f in streams):
            ready.append(httpx.get(sim.url + "/v2/health/ready", timeout=10).status_code)
            time.sleep(0.5)
        results = [f.result() for f in streams]
    for r in results:
        r["after_kill_s"] = round(r.pop("end") - killed_at, 2)
        r["node"] = served_on.get(r["id"])
    pending, detect_deadline, ready_while_gone = engine_states(), time.monotonic() + 30, []
    while time.monotonic() < detect_deadline:  # Serve notices the lost replica, starts a replacement
        if pending.get("RUNNING") == 1 and sum(pending.values()) == 2:  # ...that waits for a node
            ready_while_gone.append(httpx.get(sim.url + "/v2/health/ready", timeout=10).status_code)
            if len(ready_while_gone) >= 4:
                break
        time.sleep(0.5)
        pending = engine_states()
    detected_s = round(time.monotonic() - killed_at, 1)
    joined_at = time.monotonic()
    sim.worker_nodes.remove(victim)
    sim.worker_nodes.append(sim.cluster.add_node(num_cpus=2, resources={"NPU": 2}))
    replaced_in_s = wait_running(2)
    after, deadline = {}, time.time() + 30
    while len(after) < 2 and time.time() < deadline:  # until the router has heard of the replacement
        after.update(placement(handle))
        time.sleep(1)
    return {"nodes_before": sorted(nodes), "victim": victim.node_id, "results": results, "ready_during": ready,
            "ready_while_gone": ready_while_gone, "states_before_new_node": pending,
            "replacement_asked_for_in_s": detected_s, "new_node": sim.worker_nodes[-1].node_id,
            "replaced_in_s": round(replaced_in_s, 1), "node_to_serving_s": round(time.monotonic() - joined_at, 1),
            "placement_after": list(after.values()), "statuses_after": [speak(sim.url, 200 + i) for i in range(3)]}


def over_capacity(sim, voices_dir: str) -> dict:
    """Five replicas asked for, four cards: four run on distinct cards, the fifth waits."""
    from ray import serve

    from deployments.sim_cluster import app_args, deploy

    deploy(app_args(voices_dir), {"num_replicas": 5}, blocking=False)
    handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
    deadline = time.time() + 180
    while time.time() < deadline:
        states = engine_states()
        if states.get("RUNNING", 0) == 4 and sum(states.values()) == 5:
            break
        time.sleep(1)
    time.sleep(3)  # the fifth stays pending
    return {"states_over_capacity": engine_states(),
            "placement_over_capacity": list(placement(handle).values()),
            "statuses_over_capacity": [speak(sim.url, 10 + i) for i in range(3)]}


def main(voices_dir: str, port: int) -> dict:
    from ray import serve

    from deployments.sim_cluster import app_args, deploy, sim_cluster
    from tests.deployments.cluster_autoscale import autoscale
    from tests.deployments.cluster_conversations import conversations_across
    from tests.deployments.cluster_rollout import rolling_update

    out: dict = {"phase_s": {}}
    t0 = time.monotonic()

    def timed(name: str, result: dict) -> dict:
        nonlocal t0
        out["phase_s"][name], t0 = round(time.monotonic() - t0, 1), time.monotonic()
        return result

    with sim_cluster(nodes=2, cards_per_node=2, http_port=port) as sim:
        out["nodes"] = [n.node_id for n in sim.worker_nodes]
        deploy(app_args(voices_dir), {"num_replicas": 4})
        handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
        out["placement"] = timed("placement", list(placement(handle).values()))
        out["voices"] = timed("voices", voices_across(sim.url, handle, replicas=4))
        out["conversations"] = timed("conversations", conversations_across(sim.url, handle))
        out["autoscale"] = timed("autoscale", autoscale(sim, voices_dir, cards=4))
        out["rollout"] = timed("rollout", rolling_update(sim, voices_dir))
        out["node_loss"] = timed("node_loss", node_loss(sim, handle, voices_dir))
        # last: Serve stops a replica that never got a card only after graceful_shutdown_timeout_s
        out.update(timed("over_capacity", over_capacity(sim, voices_dir)))
        out["nodes_at_end"] = [n.node_id for n in sim.worker_nodes]
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], int(sys.argv[2]))))

"""A real multi-node Ray cluster on loopback with simulated Ascend cards (Ray's NPU resource),
2 nodes x 2 cards, the application deployed from a Serve config as KubeRay does: each engine
replica holds exactly one card (Ray hands each its own ASCEND_RT_VISIBLE_DEVICES); a custom voice
speaks on every replica and, deleted, is forgotten by all; a downscale drains busy replicas;
under load Serve scales from 1 replica to one per card and back, nothing lost; losing a node
mid-load ends its streams while the other replica's finish, readiness stays up, and the
replacement serves from a card of the node that replaces the lost one; a replica beyond the
cards waits while the others serve.
Runs tests/deployments/cluster_check.py in a process of its own (`pytest -s` prints the
timelines)."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_many_cards_one_service(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.deployments.cluster_check", str(tmp_path), str(free_port())],
                          capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print("RESULT", json.dumps(result))  # shown with -s: every timeline
    for seen, nodes in ((result["placement"], result["nodes"]), (result["placement_over_capacity"], result["nodes_at_end"])):
        assert len(seen) == 4, seen  # 4 replicas asked for, then 5: one per card
        assert all(p["node_id"] in nodes for p in seen), seen  # never on the head (no card there)
        held = [(p["node_id"], p["card"]) for p in seen]
        assert len(set(held)) == len(held), held  # no two replicas share a card
        assert all(p["card"] in ("npu:0", "npu:1") for p in seen), seen
        assert max(Counter(p["node_id"] for p in seen).values()) == 2  # 2 cards per node
    states = result["states_over_capacity"]  # the fifth waits for a card (Serve calls it STARTING)
    assert states.pop("RUNNING") == 4 and sum(states.values()) == 1 and set(states) <= {"STARTING", "PENDING_ALLOCATION"}
    assert result["statuses_over_capacity"] == [200] * 3
    voices = result["voices"]  # a custom voice across 4 replicas
    assert voices["too_long_status"] == 400 and not voices["too_long_kept"]
    assert voices["holders"] == [True] * 4 and voices["spoken"] >= 4
    assert 0 <= voices["max_pcm_difference"] <= 2  # same seed, same audio on every card, batched or not
    assert voices["deleted_status"] == 200 and 0 <= voices["forgotten_everywhere_in_s"] < 5
    assert voices["speak_deleted_status"] == 400  # voice_not_found, as for any unknown voice
    drain = result["drain"]  # 4 replicas, each with streams, scaled down to 1 while they run
    seen = drain["streams_per_replica"]  # a replica with all 4 slots busy takes no stats call: not seen
    assert min(seen) >= 1 and (4 - len(seen)) * 4 == 12 - sum(seen)  # so every replica holds streams
    assert drain["max_stopping"] == 3  # three busy replicas stopped...
    assert drain["outcomes"] == ["complete"] * 12 and drain["running_after_s"] >= 0  # ...after their streams
    scale = result["autoscale"]
    assert scale["timeline"][0][1] == 1 and scale["to_full_s"] > 0  # from 1 replica to one per card
    # nothing cut or lost: each request got all its audio, or a 429 before it started (8 clients
    # at once against 1 replica's 4 slots + 4 queued places, before the scale-out)
    assert set(scale["outcomes"]) <= {"complete", "http_429"} and scale["complete"] > 16
    assert len(scale["average_batch"]) == 4 and min(scale["average_batch"]) > 1  # load spread: each one batches
    assert scale["back_to_1_s"] > 0
    assert scale["status_after"] == 200
    loss = result["node_loss"]
    assert len(loss["nodes_before"]) == 2  # one replica per card node
    outcomes = Counter(r["outcome"] for r in loss["results"])
    # four streams per replica: those on the surviving replica finish in full, those on the lost
    # node end (a cut stream); none is refused or left hanging
    assert outcomes == Counter({"complete": 4, "cut": 4}), loss
    assert all(r["after_kill_s"] < 30 for r in loss["results"] if r["outcome"] == "cut"), loss["results"]
    assert set(loss["ready_during"]) == {200}  # a healthy replica remained: readiness stayed up
    states = loss["states_before_new_node"]  # the survivor serves; the replacement waits for a node
    assert states.pop("RUNNING") == 1 and sum(states.values()) == 1 and set(states) <= {"STARTING", "PENDING_ALLOCATION"}
    assert loss["replaced_in_s"] >= 0 and loss["statuses_after"] == [200] * 3
    after = loss["placement_after"]
    survivor = set(loss["nodes_before"]) - {loss["victim"]}
    assert len(after) == 2 and {p["node_id"] for p in after} == survivor | {loss["new_node"]}
    assert all(p["card"] in ("npu:0", "npu:1") for p in after)  # the replacement took a card on the new node

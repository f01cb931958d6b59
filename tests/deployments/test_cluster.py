"""A real multi-node Ray cluster on loopback with simulated Ascend cards (Ray's NPU resource),
2 nodes x 2 cards, the application deployed from a Serve config as KubeRay does: each engine
replica holds exactly one card (Ray hands each its own ASCEND_RT_VISIBLE_DEVICES); a custom voice
speaks on every replica and, deleted, is forgotten by all within 2.5 s; a conversation's turns
all land on the replica that holds its context, give the same audio as a twin conversation on
any replica, and after that replica is killed its next turn is the same audio from another; under load Serve scales
from 1 replica to one per card, then the autoscaler itself scales down while streams run on the
replicas it removes (they finish in full), and back to 1; a changed config rolls out under load
(no stream cut, readiness never drops, new requests on the new replicas); losing a node
mid-load ends exactly its streams within seconds while the other replica's finish, readiness
stays up, and the replacement serves from a card of the node that replaces the lost one; a
replica beyond the cards waits while the others serve.
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
    # deleted: every replica forgets it within the store-following period (1 s) + one stats sweep
    assert voices["deleted_status"] == 200 and 0 <= voices["forgotten_everywhere_in_s"] < 2.5
    assert voices["speak_deleted_status"] == 400  # voice_not_found, as for any unknown voice
    talk = result["conversations"]  # each turn where its conversation's context is: one replica, the same each turn
    assert all(len(set(map(tuple, held))) == 1 and len(held[0]) == 1 for held in talk["holders"]), talk
    assert max(talk["max_pcm_difference"]) <= 2 and talk["difference_after_loss"] <= 2, talk  # same audio anywhere
    assert talk["killed"] not in talk["holders_after_loss"] and len(talk["holders_after_loss"]) == 1, talk
    assert talk["turns"] == [6, 6], talk  # the recorded turn, 4 replies and the one after the loss
    scale = result["autoscale"]
    assert scale["timeline"][0][1] == 1 and scale["to_full_s"] > 0  # from 1 replica to one per card
    # nothing cut or lost: each request got all its audio, or a 429 before it started (8 clients
    # at once against 1 replica's 4 slots + 4 queued places, before the scale-out)
    assert set(scale["outcomes"]) <= {"complete", "http_429"} and scale["complete"] > 16
    # load spread: every replica served, and batched (the last to start, with 10 s of load at
    # 2 requests per replica, may not have)
    batches = scale["average_batch"]
    assert len(batches) == 4 and min(batches) >= 1 and sum(b > 1 for b in batches) >= 3, batches
    down = scale["scale_down_with_streams"]  # the autoscaler, not a replica count, takes 4 to 2...
    assert down["fewest_running_while_live"] <= 2 and down["most_stopping_while_live"] >= 1, down
    # ...while a stream runs on each of the 4 replicas (the least busy takes each; so a stopped
    # one held a stream)
    assert down["placed"] == 4 and down["replicas_holding"] == 4, down
    assert down["outcomes"] == ["complete"] * 4  # every stream finished in full, stopped replica or not
    assert scale["back_to_1_s"] >= 0  # back at min_replicas (0.0: already, as the last streams ended; -1: never)
    assert scale["status_after"] == 200
    roll = result["rollout"]  # a changed config deployed while four listeners keep streaming
    assert set(roll["outcomes"]) <= {"complete", "http_429"}, roll  # no admitted stream cut...
    assert roll["first_outcomes"] == ["complete"] * 4, roll
    # ...among them those in flight on the old replicas when the first began to drain
    assert roll["live_when_draining"] and set(roll["live_when_draining"]) == {"complete"}, roll
    assert roll["ready"] == [200] and roll["ready_samples"] >= 8, roll  # readiness never dropped
    # new replicas started before the old ones went: never fewer than 2 running
    assert roll["most_replicas_during"] >= 3 and roll["fewest_running_during"] == 2, roll
    assert roll["rolled_in_s"] > 0 and len(roll["old_pids"]) == 2
    new = roll["new"]  # only new replicas (the new max_num_seqs, new processes) serve now
    assert len(new) == 2 and all(p["slots"] == 3 and p["pid"] not in roll["old_pids"] for p in new), roll
    assert roll["statuses_after"] == [200] * 3
    loss = result["node_loss"]
    assert len(loss["nodes_before"]) == 2  # one replica per card node
    outcomes = Counter(r["outcome"] for r in loss["results"])
    # three streams per replica: those on the surviving replica finish in full, those on the
    # lost node end within seconds (a cut stream, not a timeout); none is refused or left hanging
    assert outcomes == Counter({"complete": 3, "cut": 3}), loss
    for r in loss["results"]:  # the cut ones are exactly those the lost node's replica served
        assert (r["outcome"] == "cut") == (r["node"] == loss["victim"]), loss["results"]
    assert all(r["after_kill_s"] < 8 for r in loss["results"] if r["outcome"] == "cut"), loss["results"]
    assert set(loss["ready_during"]) == {200}  # a healthy replica remained: readiness stayed up
    assert loss["ready_while_gone"] == [200] * 4  # also while Serve shows one running, one replacing
    states = loss["states_before_new_node"]  # the survivor serves; the replacement waits for a node
    assert states.pop("RUNNING") == 1 and sum(states.values()) == 1 and set(states) <= {"STARTING", "PENDING_ALLOCATION"}
    assert loss["replaced_in_s"] >= 0 and loss["statuses_after"] == [200] * 3
    after = loss["placement_after"]
    survivor = set(loss["nodes_before"]) - {loss["victim"]}
    assert len(after) == 2 and {p["node_id"] for p in after} == survivor | {loss["new_node"]}
    assert all(p["card"] in ("npu:0", "npu:1") for p in after)  # the replacement took a card on the new node

"""Autoscaling on real-time headroom (deployments/autoscaling.py), against Ray Serve's own
AutoscalingContext, config models and policy wrapper (no cluster): it scales up when the
replicas' headroom is gone although ongoing requests are below the target, holds inside one
replica's capacity of the reserve, scales down only while the reserve survives the removal,
stays within the bounds, falls back to Serve's ongoing-requests policy without (fresh) stats,
and leaves the delays to Serve. One test deploys the real app and reads both ends."""

from __future__ import annotations

import math
import random
import time

import pytest

pytest.importorskip("ray")

from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve._private.constants import SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY as STARTED
from ray.serve.autoscaling_policy import (
    _apply_autoscaling_config,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import (
    CAPACITY,
    HEADROOM,
    POLICY_PATH,
    STREAMS,
    WAITING,
    HeadroomPolicy,
    headroom_policy,
    policy_config,
    replica_autoscaling_stats,
)

DEPLOYMENT = DeploymentID(name="SpeechReplica", app_name="csm")
NOW = 1_000_000.0


def context(replicas: list[dict | None], *, target: int | None = None, ongoing: float = 0.0, queued: float = 0.0,
            min_replicas: int = 1, max_replicas: int = 8, target_ongoing: float = 12, now: float = NOW,
            age_s: float = 0.5, policy_state: dict | None = None, **config) -> AutoscalingContext:
    """A context of running replicas, each given as its last report ({"headroom", "capacity",
    "waiting"}) or None (never reported)."""
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(len(replicas))]
    raw: dict = {}
    for rid, report in zip(ids, replicas, strict=True):
        if report is None:
            continue
        values = {HEADROOM: report["headroom"], CAPACITY: report["capacity"], WAITING: report.get("waiting", 0),
                  STREAMS: report["capacity"] - report["headroom"]}
        for name, value in values.items():  # an older point first: the policy reads the newest
            raw.setdefault(name, {})[rid] = [TimeStampedValue(now - age_s - 1.0, 99.0),
                                             TimeStampedValue(now - age_s, float(value))]
    cfg = AutoscalingConfig(min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=target_ongoing,
                            **config)
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name, app_name=DEPLOYMENT.app_name,
        current_num_replicas=len(ids), target_num_replicas=len(ids) if target is None else target,
        running_replicas=ids, total_num_requests=ongoing, total_queued_requests=queued,
        aggregated_metrics=dict, raw_metrics=raw, capacity_adjusted_min_replicas=min_replicas,
        capacity_adjusted_max_replicas=max_replicas, policy_state=dict(policy_state or {}),
        last_scale_up_time=None, last_scale_down_time=None, current_time=now, config=cfg)


def rep(headroom: int, capacity: int = 4, waiting: int = 0) -> dict:
    return {"headroom": headroom, "capacity": capacity, "waiting": waiting}


def decide(ctx, **kwargs) -> float:
    return HeadroomPolicy(**kwargs)(ctx)[0]


# --- the decision ---------------------------------------------------------------------------------


def test_scales_up_when_headroom_is_gone_though_ongoing_requests_are_below_target():
    # 2 replicas whose real-time capacity (3 each) is full: 6 ongoing, far below 2 x 12
    ctx = context([rep(0, 3), rep(0, 3)], ongoing=6)
    assert replica_queue_length_autoscaling_policy(ctx)[0] < 2  # Serve's own policy would even scale down
    wanted, state = HeadroomPolicy()(ctx)
    assert wanted == 3 and state["decided_by"] == "headroom" and state["reserve"] == 1
    assert decide(context([rep(0, 3), rep(0, 3)], ongoing=6), target_headroom=4) == 4  # ceil(4 / 3) more


def test_streams_waiting_for_headroom_count_as_missing_headroom():
    assert decide(context([rep(0), rep(0, waiting=5)], ongoing=8)) == 4  # 1 + 5 streams short: 2 more
    assert decide(context([rep(2), rep(0)], ongoing=6)) == 2  # 2 free >= 1: hold


def test_holds_within_one_replica_of_the_reserve():
    for free in (1, 2, 3, 4):  # the reserve (1) is kept; removing 4 of capacity would break it
        assert decide(context([rep(free), rep(0)], ongoing=8 - free)) == 2, free
    # hold means the current target, also while a replica it asked for is still starting
    assert decide(context([rep(1), rep(1)], target=3, ongoing=6)) == 3


def test_scales_down_only_while_the_reserve_survives_the_removal():
    assert decide(context([rep(3), rep(2)], ongoing=3)) == 1  # 5 free - 4 = 1 >= 1
    assert decide(context([rep(4), rep(4), rep(4)], ongoing=0)) == 1  # 12 - 4 - 4 = 4: two at once
    assert decide(context([rep(3), rep(1), rep(0)], ongoing=8)) == 3  # 4 free - 4 = 0 < 1: hold
    # the largest capacities are assumed removed (Serve picks the replica)
    assert decide(context([rep(2, 2), rep(5, 8)], ongoing=3)) == 2  # 7 - 8 < 1: hold


def test_no_flapping_a_scale_down_is_never_followed_by_a_scale_up():
    """Remove what the policy lets go, move the removed replicas' streams to the others (as new
    requests would land): the next decision never wants more than the removal left."""
    rng = random.Random(7)
    for _ in range(500):
        caps = [rng.randint(1, 8) for _ in range(rng.randint(2, 6))]
        streams = [rng.randint(0, c) for c in caps]
        reserve = rng.randint(0, 4)
        ctx = context([rep(c - s, c) for c, s in zip(caps, streams, strict=True)], ongoing=sum(streams))
        wanted = decide(ctx, target_headroom=reserve, ongoing_requests_floor=False)
        k = len(caps) - wanted
        if k <= 0:
            continue
        order = sorted(range(len(caps)), key=lambda i: -caps[i])
        gone, kept = order[:k], order[k:]
        load = sum(streams[i] for i in gone)
        left = []
        for i in kept:
            moved = min(load, caps[i] - streams[i])
            load -= moved
            left.append(rep(caps[i] - streams[i] - moved, caps[i]))
        assert load == 0  # the others take the removed replicas' streams
        after = decide(context(left, ongoing=sum(streams)), target_headroom=reserve, ongoing_requests_floor=False)
        assert after <= wanted, (caps, streams, reserve, wanted, after)


def test_fraction_of_capacity_as_the_reserve():
    # 3 x 8 capacity, reserve 25% = 6: 5 free is short by 1 (one more replica)
    assert decide(context([rep(2, 8), rep(2, 8), rep(1, 8)], ongoing=19), headroom_fraction=0.25) == 4
    # 14 free: removing 8 leaves 6 >= 25% of 16 (4)
    assert decide(context([rep(6, 8), rep(4, 8), rep(4, 8)], ongoing=10), headroom_fraction=0.25) == 2


def test_bounds():
    assert decide(context([rep(0), rep(0)], ongoing=8, max_replicas=2)) == 2  # at the cap: hold, no timer
    assert decide(context([rep(0, 1)] * 3, ongoing=3, max_replicas=4), target_headroom=9) == 4
    assert decide(context([rep(4), rep(4)], ongoing=0, min_replicas=2)) == 2
    assert decide(context([rep(4)] * 4, ongoing=0, min_replicas=2)) == 2


def test_ongoing_requests_floor():
    # plenty of headroom but more ongoing requests (queued at the handles) than 2 x 12: Serve's policy wins
    ctx = context([rep(4, 16), rep(4, 16)], ongoing=36)
    wanted, state = HeadroomPolicy()(ctx)
    assert wanted == pytest.approx(3) and state["decided_by"] == "ongoing_requests"
    assert decide(ctx, ongoing_requests_floor=False) == 2


# --- without stats: Serve's ongoing-requests policy -------------------------------------------------


def test_without_stats_serves_own_policy_decides():
    for ongoing in (0.0, 6.0, 30.0):
        ctx = context([None, None], ongoing=ongoing)
        wanted, state = HeadroomPolicy()(ctx)
        assert wanted == replica_queue_length_autoscaling_policy(ctx)[0] and state["decided_by"] == "ongoing_requests"
    stale = context([rep(0), rep(0)], ongoing=6, age_s=31)  # older than look_back_period_s (30)
    assert decide(stale) == replica_queue_length_autoscaling_policy(stale)[0] == 0.5


def test_a_replica_not_reported_yet_counts_as_full():
    # the reported one has 1 free; the other (just started, or its report lost) counts 0 free
    assert decide(context([rep(1), None], ongoing=3)) == 2  # no scale-down on a guess
    assert decide(context([rep(0), None], ongoing=4)) == 3


# --- inside Serve: its wrapper, its config models ---------------------------------------------------


def test_serve_applies_its_delays_to_the_policy():
    """Serve wraps every policy (`_apply_autoscaling_config`): the same wish for
    upscale_delay_s / downscale_delay_s before it acts, timed in the policy state."""
    policy = _apply_autoscaling_config(HeadroomPolicy())
    full = [rep(0), rep(0)]
    assert policy(context(full, ongoing=8, upscale_delay_s=0))[0] == 3  # no delay: at once
    wanted, state = policy(context(full, ongoing=8, upscale_delay_s=30))
    assert wanted == 2 and state["headroom"] == 0  # waits; Serve's timer kept beside our state
    assert state[STARTED] is not None
    state[STARTED] = time.time() - 31  # the wish has held for 31 s
    assert policy(context(full, ongoing=8, upscale_delay_s=30, policy_state=state))[0] == 3
    idle = [rep(4), rep(4)]
    assert policy(context(idle, downscale_delay_s=600))[0] == 2  # downscale_delay_s (600) not yet
    assert policy(context(idle, downscale_delay_s=0))[0] == 1


def test_policy_config_is_what_serve_loads():
    """The `policy` block a Serve config carries: Serve imports it, pickles it (by value) and
    builds the class with its kwargs once per config."""
    block = policy_config(target_headroom=2, headroom_fraction=0.25)
    assert block["policy_function"] == POLICY_PATH
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=3, policy=block)
    policy = _resolve_policy_callable(config.policy)
    assert type(policy).__name__ == "HeadroomPolicy"
    assert (policy.target_headroom, policy.headroom_fraction) == (2, 0.25)
    ctx = context([rep(0), rep(0)], ongoing=8)
    assert policy(ctx) == headroom_policy(ctx, 2, 0.25)
    for bad in ({"target_headroom": -1}, {"headroom_fraction": 1.0}):
        with pytest.raises(ValueError):
            policy_config(**bad)


def test_replica_autoscaling_stats_are_what_serve_accepts():
    class Stats:  # the ReplicaStats fields it reads
        headroom, realtime_capacity, num_streams, num_waiting_streams = 2, 5, 3, 0

    out = replica_autoscaling_stats(Stats())
    assert out == {HEADROOM: 2, CAPACITY: 5, STREAMS: 3, WAITING: 0}
    # Serve drops the custom metrics unless it gets Dict[str, int | float] (replica.py)
    assert all(isinstance(k, str) and isinstance(v, int | float) for k, v in out.items())
    assert math.isclose(sum(out.values()), 10)


# --- the deployed app -------------------------------------------------------------------------------

APP = "csm_headroom"


@pytest.mark.slow
def test_deployed_app_scales_on_reported_headroom(ray_serve, app_args):
    """Deployed from a Serve config as KubeRay does: the deployment carries the policy, each
    replica's record_autoscaling_stats returns its admission's numbers, Serve's controller
    receives them, and with no request at all the engine goes from 1 replica to 2 because one
    replica's 4 rows cannot give a reserve of 5 free streams (Serve's own policy would stay at 1)."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from deployments.sim_cluster import autoscaling

    config = autoscaling(2, target=4, upscale_s=0, downscale_s=600, headroom=5)
    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [{
        "name": APP, "route_prefix": "/headroom", "import_path": "deployments.app:build_app", "args": app_args,
        "deployments": [{"name": "SpeechReplica", "autoscaling_config": config}]}]}))
    try:
        deadline = time.monotonic() + 240
        while (app := serve.status().applications.get(APP)) is None or app.status != "RUNNING":
            assert app is None or app.status != "DEPLOY_FAILED", app.message
            assert time.monotonic() < deadline, app
            time.sleep(0.5)
        details = client.get_serve_details()["applications"][APP]["deployments"]["SpeechReplica"]
        deployed_policy = details["deployment_config"]["autoscaling_config"]["policy"]
        assert deployed_policy["policy_function"] == POLICY_PATH
        assert deployed_policy["policy_kwargs"]["target_headroom"] == 5

        handle = serve.get_deployment_handle("SpeechReplica", app_name=APP)
        reported = handle.record_autoscaling_stats.remote().result()
        stats = handle.stats.remote().result()  # idle replicas all report the same
        assert reported == {HEADROOM: stats.headroom, CAPACITY: stats.realtime_capacity, STREAMS: 0, WAITING: 0}
        assert 1 <= stats.headroom == stats.realtime_capacity <= app_args["engine"]["max_num_seqs"]

        deployment_id = DeploymentID(name="SpeechReplica", app_name=APP)
        states = []
        while time.monotonic() < deadline:
            received = ray.get(client._controller._get_metrics_for_deployment_for_testing.remote(deployment_id))
            states.append(dict(serve.status().applications[APP].deployments["SpeechReplica"].replica_states))
            if HEADROOM in received and states[-1].get("RUNNING", 0) == 2:
                break
            time.sleep(0.5)
        assert HEADROOM in received and CAPACITY in received, received.keys()
        assert states[-1].get("RUNNING", 0) == 2, states[-5:]  # scaled on headroom, no request sent
    finally:
        serve.delete(APP)

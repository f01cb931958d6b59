"""Serve autoscaling on real-time headroom: add an engine replica before streams are refused,
not after the slots fill up.

Each SpeechReplica reports what its admission knows (`replica_autoscaling_stats`, called by
Serve through the deployment's `record_autoscaling_stats`): `headroom`, the interactive
streams it could still start now; `realtime_capacity`, how many it predicts it keeps real
time (learned step times, <= max_num_seqs); its streams, and those waiting at it for
headroom. Serve's controller hands the series to `HeadroomPolicy` in `ctx.raw_metrics`.

The policy, per decision (Serve's control loop, every 0.1 s), over the running replicas:

    spare   = sum(headroom) - sum(waiting)        (an unreported replica counts 0)
    reserve = max(target_headroom, ceil(headroom_fraction x total realtime capacity))
    spare < reserve          -> up: current + ceil((reserve - spare) / mean capacity)
    spare - capacity of the k largest replicas >= reserve (with the reserve of what is left)
                             -> down by that k (at most to min_replicas)
    otherwise                -> hold (the current target)

Removing a replica takes its capacity: its free streams and, once the streams it serves end,
the room they held. So the down rule keeps the reserve even if the removed replica's load
comes back elsewhere, and the next decision does not scale up again (the hysteresis is one
replica's capacity). With `ongoing_requests_floor` (default) the decision is never below
Serve's own ongoing-requests policy (`target_ongoing_requests`): requests queued at the
handles, beyond every replica's slots, are visible only there, and a burst then adds as many
replicas at once as before. Until a running replica has reported (or when every report is
older than `look_back_period_s`), the ongoing-requests policy alone decides.

Serve wraps any policy (ray/serve/autoscaling_policy.py `_apply_autoscaling_config`): it
applies `upscaling_factor` / `downscaling_factor`, then `upscale_delay_s` / `downscale_delay_s`
(the same wanted direction for that long, kept in the policy state under Serve's own keys),
and the controller clips to min/max replicas. So this policy is a pure function of its
context and leaves time to Serve; it clips to the bounds itself too, so an out-of-bounds wish
does not keep a delay timer running.

In a Serve config (serve_config.yaml, k8s/generate.py, deployments/sim_cluster.py):

    autoscaling_config:
      policy: {policy_function: "deployments.autoscaling:HeadroomPolicy",
               policy_kwargs: {target_headroom: 1, headroom_fraction: 0.25}}

Serve imports the class where the application is built and pickles this module by value for
its controller, so it imports nothing of the project (only Ray and the standard library).
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

POLICY_PATH = "deployments.autoscaling:HeadroomPolicy"

# Metric names each replica reports (and the policy reads); prefixed so they never meet Serve's.
HEADROOM = "csm_realtime_headroom"
CAPACITY = "csm_realtime_capacity"
STREAMS = "csm_streams"
WAITING = "csm_waiting_streams"


def replica_autoscaling_stats(stats: Any) -> dict[str, int]:
    """A replica's `ReplicaStats` as the numbers `record_autoscaling_stats` returns."""
    return {HEADROOM: int(stats.headroom), CAPACITY: int(stats.realtime_capacity),
            STREAMS: int(stats.num_streams), WAITING: int(stats.num_waiting_streams)}


def policy_config(target_headroom: int = 1, headroom_fraction: float = 0.0,
                  ongoing_requests_floor: bool = True) -> dict:
    """The `policy` block of an autoscaling_config that selects this policy."""
    HeadroomPolicy(target_headroom, headroom_fraction, ongoing_requests_floor)  # validates
    return {"policy_function": POLICY_PATH, "policy_kwargs": {
        "target_headroom": target_headroom, "headroom_fraction": headroom_fraction,
        "ongoing_requests_floor": ongoing_requests_floor}}


class HeadroomPolicy:
    """Serve's class-callable policy: built once per deployment config with `policy_kwargs`,
    called with an AutoscalingContext on every decision."""

    def __init__(self, target_headroom: int = 1, headroom_fraction: float = 0.0,
                 ongoing_requests_floor: bool = True) -> None:
        if not isinstance(target_headroom, int) or target_headroom < 0:
            raise ValueError(f"target_headroom must be a whole number >= 0, not {target_headroom!r}")
        if not 0.0 <= headroom_fraction < 1.0:
            raise ValueError(f"headroom_fraction must be in [0, 1), not {headroom_fraction!r}")
        self.target_headroom = target_headroom
        self.headroom_fraction = float(headroom_fraction)
        self.ongoing_requests_floor = bool(ongoing_requests_floor)

    def __call__(self, ctx) -> tuple[float, dict]:
        return headroom_policy(ctx, self.target_headroom, self.headroom_fraction, self.ongoing_requests_floor)


def _latest(series_by_replica: dict, replica_id, now: float | None, max_age_s: float | None) -> float | None:
    """The newest value a replica reported for one metric, or None (none, or too old)."""
    series = series_by_replica.get(replica_id) if series_by_replica else None
    if not series:
        return None
    point = max(series, key=lambda p: p.timestamp)
    if now is not None and max_age_s is not None and now - point.timestamp > max_age_s:
        return None
    return point.value


def fleet(ctx) -> dict | None:
    """What the running replicas reported: their summed headroom and waiting streams, the
    capacities of those that reported, and how many did not; None if none did."""
    raw = ctx.raw_metrics or {}
    max_age_s = getattr(ctx.config, "look_back_period_s", None)
    headroom = waiting = unreported = 0
    capacities = []
    for replica_id in ctx.running_replicas:
        h = _latest(raw.get(HEADROOM), replica_id, ctx.current_time, max_age_s)
        c = _latest(raw.get(CAPACITY), replica_id, ctx.current_time, max_age_s)
        if h is None or c is None:
            unreported += 1
            continue
        headroom += max(0, int(h))
        waiting += max(0, int(_latest(raw.get(WAITING), replica_id, ctx.current_time, max_age_s) or 0))
        capacities.append(max(0, int(c)))
    if not capacities:
        return None
    return {"headroom": headroom, "waiting": waiting, "capacities": capacities, "unreported": unreported}


def headroom_policy(ctx, target_headroom: int = 1, headroom_fraction: float = 0.0,
                    ongoing_requests_floor: bool = True) -> tuple[float, dict]:
    """(replicas wanted, policy state to keep): see the module docstring. Pure: reads only `ctx`."""
    ongoing, _ = replica_queue_length_autoscaling_policy(ctx)
    seen = fleet(ctx) if ctx.current_num_replicas > 0 else None
    if seen is None:
        return ongoing, {"decided_by": "ongoing_requests"}
    lower, upper = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    current, target = ctx.current_num_replicas, ctx.target_num_replicas
    capacities = seen["capacities"]
    per_replica = max(1.0, sum(capacities) / len(capacities))  # what one more replica adds
    # an unreported replica: its capacity estimated, its headroom 0 (it may be full)
    capacities = sorted(capacities + [math.ceil(per_replica)] * seen["unreported"], reverse=True)

    def reserve(total_capacity: float) -> int:
        return max(target_headroom, math.ceil(headroom_fraction * total_capacity))

    spare = seen["headroom"] - seen["waiting"]
    need = reserve(sum(capacities))
    if spare < need:
        wanted = max(target, current + math.ceil((need - spare) / per_replica))
    else:
        k, removed = 0, 0
        while current - k > lower and k < len(capacities):
            after = removed + capacities[k]
            if spare - after < reserve(sum(capacities) - after):
                break
            k, removed = k + 1, after
        wanted = current - k if k else target
    by_headroom = max(lower, min(upper, wanted))
    decided = max(by_headroom, ongoing) if ongoing_requests_floor else by_headroom
    state = {"decided_by": "headroom" if decided == by_headroom else "ongoing_requests",
             "headroom": seen["headroom"], "waiting": seen["waiting"], "reserve": need,
             "unreported": seen["unreported"], "wanted_by_headroom": by_headroom}
    return max(lower, min(upper, decided)), state

"""Every overlay's RayService scales the engine on real-time headroom: the embedded Serve config
names deployments.autoscaling's policy with the kwargs k8s/generate.py sets, and Ray Serve
loads it from that config (imported, pickled by value, built with its kwargs) as the
controller will."""

from __future__ import annotations

import pytest

from deployments.autoscaling import POLICY_PATH, HeadroomPolicy
from k8s import generate
from tests.k8s.test_manifests import OVERLAYS, deployment, embedded_serve_config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_engine_autoscales_on_realtime_headroom(overlay):
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingConfig

    autoscaling = deployment(embedded_serve_config(overlay), "SpeechReplica")["autoscaling_config"]
    assert autoscaling["policy"] == generate.ENGINE_AUTOSCALING_POLICY
    assert autoscaling["policy"]["policy_function"] == POLICY_PATH
    policy = _resolve_policy_callable(AutoscalingConfig(**autoscaling).policy)
    assert type(policy).__name__ == HeadroomPolicy.__name__  # a copy pickled by value, not the class itself
    kwargs = autoscaling["policy"]["policy_kwargs"]
    assert (policy.target_headroom, policy.headroom_fraction) == (kwargs["target_headroom"], kwargs["headroom_fraction"])
    # the policy never goes below Serve's ongoing-requests policy, so that target still applies
    assert policy.ongoing_requests_floor and autoscaling["target_ongoing_requests"] > 0

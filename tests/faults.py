"""Fault injection at the engine's one seam, its `before_step` hook: a step that schedules a
request with FAULT_SEED (or LATE_FAULT_SEED, after a few frames) raises, as a device error
would. Used in-process (local_server's `before_step`) and under Ray (the same hook given to
every replica's engine by `build_app_with`), so both see the same fault."""

from __future__ import annotations

FAULT_SEED = 666_666  # fails the request's first step
LATE_FAULT_SEED = FAULT_SEED + 1  # fails once the request has 6 frames (audio already streamed)


def fail_steps_with_fault_seed(scheduled) -> None:
    requests = [*scheduled.decodes, *(c.request for c in scheduled.prefills)]
    if any(r.params.seed == FAULT_SEED or (r.params.seed == LATE_FAULT_SEED and r.num_frames >= 6)
           for r in requests):
        raise RuntimeError("simulated device error at /opt/secret/path.py, pid=1")


def ray_fault_hook():
    """`fail_steps_with_fault_seed` for Ray's replicas: its module is pickled by value, so
    Ray's workers need not import the tests package."""
    from ray import cloudpickle

    import tests.faults

    cloudpickle.register_pickle_by_value(tests.faults)
    return fail_steps_with_fault_seed


def slow_steps(scheduled) -> None:
    """Every step 100 ms longer: an engine over the real-time budget (its capacity: one stream)."""
    import time

    time.sleep(0.1)


def ray_slow_hook():
    """`slow_steps` for Ray's replicas (pickled by value, as ray_fault_hook)."""
    from ray import cloudpickle

    import tests.faults

    cloudpickle.register_pickle_by_value(tests.faults)
    return slow_steps

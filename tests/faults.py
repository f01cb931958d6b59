"""Fault injection at the engine's one seam, the runner's step: a step that schedules a
request with FAULT_SEED (or LATE_FAULT_SEED, after a few frames) raises, as a device error
would. Used in-process (local_server's
`on_engine`) and under Ray (FaultyEngine, built in the replica), so both see the same fault."""

from __future__ import annotations

FAULT_SEED = 666_666  # fails the request's first step
LATE_FAULT_SEED = FAULT_SEED + 1  # fails once the request has 6 frames (audio already streamed)


def fail_steps_with_fault_seed(engine) -> None:
    real_execute = engine.runner.execute

    def execute(scheduled):
        requests = [*scheduled.decodes, *(c.request for c in scheduled.prefills)]
        if any(r.params.seed == FAULT_SEED or (r.params.seed == LATE_FAULT_SEED and r.num_frames >= 6)
               for r in requests):
            raise RuntimeError("simulated device error at /opt/secret/path.py, pid=1")
        return real_execute(scheduled)

    engine.runner.execute = execute


def faulty_engine_deployment():
    """TTSEngine whose engine fails steps with FAULT_SEED (its module is pickled by value, so
    Ray's workers need not import the tests package)."""
    from ray import cloudpickle, serve

    import tests.faults
    from deployments.app import ENGINE_NAME, TTSEngineDeployment

    cloudpickle.register_pickle_by_value(tests.faults)
    return serve.deployment(_faulty_class(TTSEngineDeployment.func_or_class), name=ENGINE_NAME,
                            graceful_shutdown_timeout_s=5, health_check_period_s=10)


def _faulty_class(base):
    class FaultyEngine(base):
        def build_engine(self, config):
            engine = super().build_engine(config)
            fail_steps_with_fault_seed(engine)
            return engine

    return FaultyEngine

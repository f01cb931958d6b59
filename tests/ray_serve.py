"""One Ray runtime + Serve HTTP and gRPC proxies per test session (on loopback), and each test module's
application deployed on it as `csm` at `/` for the module's lifetime."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RayServe:
    url: str
    metrics_port: int
    grpc_port: int


@contextlib.contextmanager
def ray_runtime(free_port):
    import ray
    from ray import serve

    os.environ.setdefault("RAY_worker_niceness", "0")  # as make serve runs Serve (deployments/priority.py)
    metrics_port, port, grpc_port = free_port(), free_port(), free_port()
    # address="local": always a Ray of its own, never another cluster running on this host
    ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False,
             _metrics_export_port=metrics_port, _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                grpc_options={"port": grpc_port, "grpc_servicer_functions": ["serve.v2.grpc_messages.add_servicer"]})
    try:
        yield RayServe(f"http://127.0.0.1:{port}", metrics_port, grpc_port)
    finally:
        serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def deployed(runtime: RayServe, app_args: dict, before_step=None):
    """The csm application with these args (and optionally a fault-injection hook in every
    replica's engine), deleted again on exit. Yields the base URL."""
    from ray import serve

    from deployments.app import build_app_with

    # Rows are the bound these tests count on; real-time admission (on in the product) has tests of its own.
    replica = {"realtime_admission": False, **app_args.get("replica", {})}
    app = build_app_with({**app_args, "replica": replica}, before_step)
    serve.run(app, name="csm", route_prefix="/")
    try:
        yield runtime.url
    finally:
        serve.delete("csm")

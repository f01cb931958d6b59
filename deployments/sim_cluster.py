"""A Ray cluster of several nodes on this machine whose nodes declare simulated Ascend cards
(Ray's `NPU` resource), running the real application with `card: npu` and `engine.device:
cpu`: placement, scaling and node loss can be rehearsed without a card (`make serve-cluster`).

    python -m deployments.sim_cluster [--nodes 2] [--cards-per-node 2] [--port 8000]

Ray gives each replica its own card id (ASCEND_RT_VISIBLE_DEVICES), as on real nodes; the
engines compute on CPU with csm-tiny. The engine autoscales from 1 replica up to the number of
cards (short delays) on real-time headroom as in k8s (deployments/autoscaling.py: a replica added
before the free interactive streams run out, never fewer than Serve's ongoing-requests policy
asks for); a replica beyond the cards stays pending.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass

HEAD_RESOURCE = "sim_head"  # the ingress stays on the head, beside Serve's proxy: losing a card node loses engines only


@dataclass
class SimCluster:
    cluster: object  # ray.cluster_utils.Cluster
    worker_nodes: list  # one per simulated card host, in order
    url: str


def app_args(voices_dir: str, max_num_seqs: int = 4) -> dict:
    """The app on simulated cards; conversations live beside the voices (`<voices_dir>-conversations`)."""
    conversations = voices_dir.rstrip("/") + "-conversations"
    return {
        "engine": {"model": "csm-tiny", "device": "cpu", "dtype": "float32", "max_num_seqs": max_num_seqs},
        "card": "npu", "server": {"voices_dir": voices_dir, "conversations_dir": conversations},
        "max_queued_requests": 4,
        "replica": {"realtime_admission": False},  # the tiny model on a loaded CPU host: count-based admission
    }


def autoscaling(max_replicas: int, target: float = 1.0, upscale_s: float = 1.0, downscale_s: float = 5.0,
                headroom: int | None = None) -> dict:
    """SpeechReplica's autoscaling_config, with short delays and fast metrics. `headroom`: keep
    that many interactive streams of real-time headroom free (deployments/autoscaling.py, what
    the k8s overlays run), never below Serve's ongoing-requests policy; None: that policy alone."""
    config = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": max_replicas, "target_ongoing_requests": target,
              "upscale_delay_s": upscale_s, "downscale_delay_s": downscale_s, "metrics_interval_s": 0.5,
              "look_back_period_s": 2.0}
    if headroom is not None:
        from deployments.autoscaling import policy_config

        config["policy"] = policy_config(target_headroom=headroom)
    return config


@contextlib.contextmanager
def sim_cluster(nodes: int, cards_per_node: int, http_port: int, head_cpus: int = 2, node_cpus: int = 2):
    """Head (Serve's controller and proxy, the ingress; no card) + `nodes` worker nodes with
    `cards_per_node` NPUs each; Serve started with its HTTP proxy on loopback."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_worker_niceness", "0")  # Serve's processes at normal priority (priority.py)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False, "resources": {HEAD_RESOURCE: 1}})
    workers = [cluster.add_node(num_cpus=node_cpus, resources={"NPU": cards_per_node}) for _ in range(nodes)]
    ray.init(address=cluster.address, configure_logging=False)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
    try:
        yield SimCluster(cluster, workers, f"http://127.0.0.1:{http_port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def deploy(args: dict, replica_options: dict | None = None, blocking: bool = True, timeout_s: float = 240) -> None:
    """Deploy the csm application as KubeRay does, from a Serve config (the builder in
    serve_config.yaml with `args`), with extra SpeechReplica options (num_replicas or
    autoscaling_config) and the ingress kept on the head. Serve derives the code version from
    the config: with the same args a new replica count or autoscaling policy is a light update
    (replicas added, or drained and stopped, as when the autoscaler acts); new args restart them."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.parse_obj({"applications": [{
        "name": "csm", "route_prefix": "/", "import_path": "deployments.app:build_app", "args": args,
        "deployments": [
            {"name": "SpeechReplica", **(replica_options or {})},
            {"name": "SpeechIngress", "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}}},
        ]}]})
    applied_at = time.time()
    _get_global_client().deploy_apps(config)
    deadline = time.monotonic() + timeout_s
    while True:  # this config taken, built (the deployments exist) and, when blocking, running
        app = serve.status().applications.get("csm")
        if (app is not None and app.last_deployed_time_s >= applied_at and "SpeechReplica" in app.deployments
                and (not blocking or app.status == "RUNNING")):
            return
        if (app is not None and app.status == "DEPLOY_FAILED") or time.monotonic() > deadline:
            raise RuntimeError(f"csm did not deploy: {app.message if app else 'no application'}")
        time.sleep(0.5)


def engine_states() -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications["csm"].deployments["SpeechReplica"].replica_states)


def wait_running(n: int, timeout_s: float = 180) -> float:
    """Seconds until exactly n engine replicas run (and no other is starting); -1 on timeout."""

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        states = engine_states()
        if states.get("RUNNING", 0) == n and sum(states.values()) == n:
            return time.monotonic() - t0
        time.sleep(0.5)
    return -1.0


def main(argv: list[str] | None = None) -> None:
    import signal
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cards-per-node", type=int, default=2)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--voices-dir", default=None)
    a = ap.parse_args(argv)
    voices = a.voices_dir or tempfile.mkdtemp(prefix="csm-voices-")
    with sim_cluster(a.nodes, a.cards_per_node, a.port) as sim:
        deploy(app_args(voices), {"autoscaling_config": autoscaling(a.nodes * a.cards_per_node, headroom=1)})
        print(f"serving on {sim.url}: {a.nodes} nodes x {a.cards_per_node} simulated NPU cards; Ctrl-C stops")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()

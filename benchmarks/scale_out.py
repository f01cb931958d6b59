"""Scale-out benchmark on the simulated multi-node cluster (deployments/sim_cluster.py: 2 nodes
x 2 simulated Ascend cards, engines computing on CPU with csm-tiny), in one run:

  throughput  a fixed number of engine replicas (1, 2, 4), closed-loop load of
              replicas x max_num_seqs clients: aggregate audio seconds per second, ratio to
              1 replica, and to transformers `generate` (one request at a time, this process,
              before the cluster starts: the baseline every benchmark here prints).
  autoscale   Serve's autoscaling (1 to 4 replicas, target 1 ongoing request) under
              `--autoscale-clients` closed-loop clients: seconds from load start until
              2, 3 and 4 replicas serve.
  burst       simultaneous bursts against the places (slots + Serve's queue): one replica of 16
              slots + 32 queued (the production shape: 128 and 192 = 4x at once), and 4
              replicas of 4 slots + 16 queued (128 = 4x at once): how many were served, and
              the refusal latency p50/p95/max (all 429 + Retry-After).

The 2 cores of a small machine are shared by every replica, so aggregate throughput cannot grow
with replicas here the way it does with one card per replica; the figures show the mechanics
(placement, spread, no loss) and the CPU ceiling, not card scaling.

Run: `python -m benchmarks.scale_out --out benchmarks/results/scale-out-csm-tiny-cpu.json`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import load
from deployments.sim_cluster import engine_states, wait_running


def transformers_audio_s_per_s(requests: int = 4, seconds: float = 2.0) -> float:
    """transformers `generate` for csm-tiny, one request at a time, on this process's CPU."""
    from benchmarks.engine_bench import Job, _generate_batch
    from models import load_model
    from models.params import FRAME_RATE_HZ

    loaded = load_model("csm-tiny", device="cpu", dtype="float32")
    frames = round(seconds * FRAME_RATE_HZ)
    _generate_batch(loaded, [Job("warm", "Warm up.", 4, 0)])
    t0 = time.perf_counter()
    for i in range(requests):
        _generate_batch(loaded, [Job(f"t{i}", "The quick brown fox jumps over the lazy dog.", frames, i)])
    return requests * seconds / (time.perf_counter() - t0)


def load_args(url: str, clients: int, requests: int, seconds: float, honor_retry_after: bool = True):
    return load.parse_args(["--url", url, "--concurrency", str(clients), "--requests-per-level", str(requests),
                            "--max-audio-seconds", str(seconds), "--warmup", "0", "--timeout-s", "120"]
                           + (["--honor-retry-after"] if honor_retry_after else []))


def throughput(sim, voices: str, replicas: int, slots: int, per_client: int, seconds: float) -> dict:
    from deployments.sim_cluster import app_args, deploy

    deploy(app_args(voices, max_num_seqs=slots), {"num_replicas": replicas})
    wait_running(replicas)
    clients = replicas * slots
    level = asyncio.run(load.run_level(load_args(sim.url, clients, clients * per_client, seconds), "closed", clients))
    return {"replicas": replicas, "clients": clients, **{k: level[k] for k in ("sent", "ok", "rejected", "failed",
            "lost", "wall_s", "throughput_audio_s_per_s", "ttfa_s", "rtf")}}


def autoscale(sim, voices: str, clients: int, hold_s: float, seconds: float) -> dict:

    from deployments.sim_cluster import app_args, autoscaling, deploy

    deploy(app_args(voices), {"autoscaling_config": autoscaling(4)})
    wait_running(1)
    asked: dict[int, float] = {}  # replicas Serve has started (any state) -> seconds since load start
    reached: dict[int, float] = {}  # replicas running
    done = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:
        while not done.is_set():
            states = engine_states()
            now = round(time.monotonic() - t0, 1)
            asked.setdefault(sum(states.values()), now)
            reached.setdefault(states.get("RUNNING", 0), now)
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    requests = int(clients * hold_s / seconds)
    level = asyncio.run(load.run_level(load_args(sim.url, clients, requests, seconds), "closed", clients))
    done.set()
    watcher.join()
    return {"clients": clients, "seconds_until_replicas": {str(n): reached.get(n) for n in (2, 3, 4)},
            "seconds_until_serve_asked_for": {str(n): asked.get(n) for n in (2, 3, 4)},
            **{k: level[k] for k in ("sent", "ok", "rejected", "failed", "lost", "throughput_audio_s_per_s")}}


def burst(sim, voices: str, replicas: int, slots: int, queued: int, n: int) -> dict:
    from deployments.sim_cluster import app_args, deploy

    deploy({**app_args(voices, max_num_seqs=slots), "max_queued_requests": queued}, {"num_replicas": replicas})
    wait_running(replicas)
    time.sleep(2)  # the router has heard of every replica
    places = replicas * slots + queued
    level = asyncio.run(load.run_level(load_args(sim.url, n, n, 4.0, honor_retry_after=False), "closed", n))
    rej = level["rejections"]
    return {"replicas": replicas, "places": places, "sent": n, "ok": level["ok"], "rejected": level["rejected"],
            "failed": level["failed"], "lost": level["lost"], "with_retry_after": rej["with_retry_after"],
            "refusal_latency_ms": {k: round(v * 1e3) if v is not None else None for k, v in rej["latency_s"].items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--slots", type=int, default=4, help="max_num_seqs per replica in the throughput runs")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0, help="audio seconds per request")
    ap.add_argument("--autoscale-clients", type=int, default=8)
    ap.add_argument("--autoscale-hold-s", type=float, default=60.0, help="load duration, about")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    from deployments.sim_cluster import sim_cluster

    report: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    report["transformers_sequential_audio_s_per_s"] = round(transformers_audio_s_per_s(seconds=a.seconds), 3)
    voices = tempfile.mkdtemp(prefix="csm-voices-")
    with sim_cluster(nodes=2, cards_per_node=2, http_port=a.port) as sim:
        runs = [throughput(sim, voices, n, a.slots, a.requests_per_client, a.seconds) for n in a.replicas]
        base, hf = runs[0]["throughput_audio_s_per_s"], report["transformers_sequential_audio_s_per_s"]
        for run in runs:
            run["vs_first"] = round(run["throughput_audio_s_per_s"] / base, 2) if base else None
            run["vs_transformers"] = round(run["throughput_audio_s_per_s"] / hf, 2) if hf else None
            print(f"{run['replicas']} replica(s): {run['throughput_audio_s_per_s']:.2f} audio s/s "
                  f"(x{run['vs_first']} vs {a.replicas[0]}, x{run['vs_transformers']} vs transformers), "
                  f"ok {run['ok']}/{run['sent']}", file=sys.stderr)
        report["throughput"] = runs
        report["autoscale"] = autoscale(sim, voices, a.autoscale_clients, a.autoscale_hold_s, a.seconds)
        print(f"autoscale: {report['autoscale']['seconds_until_replicas']}", file=sys.stderr)
        # the production shape on one card (16 slots, 32 queued: 128 at once as in the issue, and
        # 4x its places), then 4 replicas of 4 slots + 16 queued (4x their 32 places)
        report["burst"] = [burst(sim, voices, 1, 16, 32, 128), burst(sim, voices, 1, 16, 32, 192),
                           burst(sim, voices, 4, 4, 16, 128)]
        for b in report["burst"]:
            print(f"burst {b['sent']} at once on {b['replicas']} replica(s), {b['places']} places: ok {b['ok']}, "
                  f"refused {b['rejected']} in {b['refusal_latency_ms']} ms", file=sys.stderr)
    text = json.dumps(report, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o))
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

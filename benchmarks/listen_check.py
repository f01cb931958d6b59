"""The accelerator check's `listen` step (benchmarks/device_check.py): what a real-time listener hears.

    python -m benchmarks.listen_check --device cuda --model csm-1b-random --concurrency 1 4 16 --out listen.json

First the engine alone in a process of its own (Engine.profile_steps at every batch size on
the device: the streams it keeps within the real-time budget). Then the one-process server
(`python -m deployments.local`, no Ray; its own process, as a client would see it, killed
with this one) on a free loopback port with the model and device given, waits until
/v2/health/ready answers 200, runs benchmarks/load.py's closed loop with pcm listeners (each
stream played back in real time from its first byte) at each concurrency level and a last
`--burst` of requests sent at once (refusal latency, streams served at once), reads the
replica's published capacity after each level, and stops the server. The report (`config`,
`engine_alone`, `server_start_s`, `levels`: load.py's per-level summaries with
`capacity_after`, `served_over_engine_alone`) is rewritten after each level, so a timeout
keeps the levels that ran. Exits 1 if the server did not come up or a level had a failed or lost request or
no stream at all (429s and gaps are measurements, not failures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.realtime_serve import capacity_of, engine_alone

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Every word arrives in time for the listener."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python -m deployments.local ARGS`, killed when this process dies (a step timeout kills it):
# PR_SET_PDEATHSIG, set in the server's own process after exec, then a check that we still live.
SERVER = f"""import ctypes, os, runpy, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, {int(signal.SIGKILL)})
    if os.getppid() != int(sys.argv[1]):
        sys.exit("the listen check is gone")
sys.argv = ["deployments.local", *sys.argv[2:]]
runpy.run_module("deployments.local", run_name="__main__", alter_sys=True)
"""


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSM_")}  # the shipped settings: no API keys
    cmd = [sys.executable, "-c", SERVER, str(os.getpid()), "--host", "127.0.0.1", "--port", str(port),
           "--grpc-port", "0", "--model", args.model, "--device", args.device, "--max-num-seqs", str(args.max_num_seqs)]
    print("server: python -m deployments.local " + " ".join(cmd[4:]), flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def wait_ready(server: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before it was ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def level_problem(level: dict) -> str | None:
    if level["ok"] == 0 or level["failed"] or level["lost"]:
        return (f"{level['label']}: {level['ok']} ok, {level['failed']} failed, {level['lost']} lost "
                f"({level['errors_by_status']})")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests-per-c", type=int, default=2, help="closed loop: requests per level = this x c")
    ap.add_argument("--max-audio-seconds", type=float, default=4.0)
    ap.add_argument("--max-num-seqs", type=int, default=16, help="the server's KV slots (deployments.local's default)")
    ap.add_argument("--start-timeout-s", type=float, default=240)
    ap.add_argument("--timeout-s", type=float, default=60, help="per request")
    ap.add_argument("--burst", type=int, default=64, help="a last level of this many at once (0: none)")
    ap.add_argument("--margin", type=float, default=0.2, help="the replica's realtime_margin (its default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "levels": []}
    report["config"]["text"] = TEXT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.unlink(missing_ok=True)  # never a previous run's levels
    problems: list[str] = []
    try:  # the engine alone first (its own process), for the served-at-once ratio
        report["engine_alone"] = engine_alone(args.model, args.max_num_seqs, args.margin, None, args.device)
    except Exception as e:  # noqa: BLE001 - a failed measurement is a problem to report, not a crash
        problems.append(f"engine alone: {type(e).__name__}")
    t0 = time.monotonic()
    server = start_server(args, port)
    levels = [(c, args.requests_per_c * c) for c in args.concurrency] + ([(args.burst, args.burst)] if args.burst else [])
    try:
        wait_ready(server, url, args.start_timeout_s)
        report["server_start_s"] = round(time.monotonic() - t0, 1)
        print(f"server ready in {report['server_start_s']} s on {url}", flush=True)
        for i, (c, n) in enumerate(levels):
            load_args = load.parse_args(["--url", url, "--concurrency", str(c), "--format", "pcm",
                                         "--requests-per-level", str(n),
                                         "--max-audio-seconds", str(args.max_audio_seconds), "--text", TEXT,
                                         "--timeout-s", str(args.timeout_s), "--warmup", "1" if i == 0 else "0"])
            report["levels"] += asyncio.run(load.run_all(load_args))
            report["levels"][-1]["capacity_after"] = capacity_of(httpx.get(f"{url}/metrics", timeout=5).text)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # a timeout keeps the levels that ran
            problems += filter(None, [level_problem(report["levels"][-1])])
    except RuntimeError as e:
        problems.append(str(e))
    finally:
        stop_server(server)
    report["problems"] = problems
    if report.get("engine_alone") and report["levels"]:
        best = max(level["max_concurrent_ok"] for level in report["levels"])
        report["served_over_engine_alone"] = round(best / max(1, report["engine_alone"]["capacity"]), 2)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

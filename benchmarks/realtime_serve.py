"""Real time under load, as users get it: the engine alone against `make serve` in one run.

    python -m benchmarks.realtime_serve --out benchmarks/results/realtime-serve-csm-tiny-cpu.json

1. The engine alone (this process, before the server starts; nothing else running): the decode
   step period at every batch size 1..max_num_seqs (Engine.profile_steps), with the engine
   thread count a replica uses (models/core/threads.py) and with every core, and from it the
   streams it keeps within the real-time budget (80 ms / (1 + margin)).
2. `make serve` (the shipped serve_config.yaml, Ray Serve, csm-tiny on this CPU), then
   benchmarks/load.py at each closed-loop level, run at `nice -n 19` so the load client does not
   take the server's CPU: c = 1, 2, 4, 8, 16, 32 (--requests-per-level each, at least c), a burst of
   --burst requests sent at once, and after a 5 s pause c=4 again (does the capacity come back?).
   Between levels the replica's published capacity (`tts_realtime_capacity_streams` from Ray's
   metrics export) is read.
3. The report: per level (c=1 and c=8 with the server's per-stage timings), streams served
   at once (the most admitted streams whose intervals overlap), time to first audio
   p50/p95/max of admitted streams, refusal latency p50/max, streams with a gap, with one over
   100 ms and the longest gap, RTF p50; and the ratio of the served-at-once figure to the
   engine alone.

Nothing is sent anywhere but loopback. The server is stopped (and `ray stop`) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
URL, METRICS = "http://127.0.0.1:8000", "http://127.0.0.1:8080/metrics"


def engine_alone(model: str, rows: int, margin: float, threads: int | None, device: str = "cpu") -> dict:
    """Step period per batch size of an idle engine (on `threads` intra-op threads; None: torch's
    default), in a process of its own (its OpenMP team must not spin beside the server later,
    and its card memory is given back), and the streams it keeps within the real-time budget."""
    set_threads = f"torch.set_num_threads({threads})" if threads else "pass"
    code = f"""import json, torch
from models import EngineConfig, build_engine
from replica.realtime import StepModel, budget_s
{set_threads}
engine = build_engine(EngineConfig(model={model!r}, device={device!r}, max_num_seqs={rows}))
engine.warm_up()
engine.profile_steps([1, 2, 4], periods=5)  # untimed: the allocator and caches settle
profile = engine.profile_steps(list(range(1, {rows} + 1)), periods=9)
print(json.dumps({{"threads": {threads!r}, "period_ms": {{b: round(t * 1e3, 1) for b, t in profile}},
                  "budget_ms": round(budget_s({margin}) * 1e3, 1), "capacity": StepModel(profile).capacity({margin}, {rows})}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def capacity_of(metrics_text: str) -> float | None:
    """The replicas' summed `tts_realtime_capacity_streams` in a Prometheus text export (Ray's
    names carry a `ray_` prefix)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
              if line.split("{", 1)[0].split(" ", 1)[0].removeprefix("ray_") == "tts_realtime_capacity_streams"]
    return sum(values) if values else None


def start_server() -> subprocess.Popen:
    subprocess.run([str(ROOT / ".venv/bin/ray"), "stop", "--force"], capture_output=True)
    proc = subprocess.Popen(["make", "serve"], cwd=ROOT, start_new_session=True,
                            stdout=open(ROOT / "out-realtime-serve.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(URL + "/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit("make serve exited; see out-realtime-serve.log")
        time.sleep(1)
    sys.exit("the server did not become ready")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT to `make serve` (Serve shuts the app down), then `ray stop`, then whatever is left
    of the group (`serve run` keeps spinning once its cluster is gone)."""
    group = os.getpgid(proc.pid)
    os.killpg(group, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    subprocess.run([str(ROOT / ".venv/bin/ray"), "stop", "--force"], capture_output=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def niceness() -> dict[str, int]:
    """The niceness of Ray's Serve processes (the engine replica, the ingress, the proxy)."""
    out = subprocess.run(["ps", "-eo", "ni,args"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines()[1:]:
        ni, _, cmd = line.strip().partition(" ")
        for name in ("ServeReplica:csm:SpeechReplica", "ServeReplica:csm:SpeechIngress", "ProxyActor", "raylet"):
            if name in cmd and name not in found:
                found[name] = int(ni)
    return found


def capacity_now() -> float | None:
    try:
        return capacity_of(httpx.get(METRICS, timeout=5).text)
    except httpx.HTTPError:
        return None


def run_load(label: str, concurrency: int, requests: int, args: argparse.Namespace, stages: bool = False) -> dict:
    """One level of benchmarks/load.py at niceness 19; `stages`: with the server's per-stage
    timings (tts_stage_seconds, scraped before and after the level)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["nice", "-n", "19", sys.executable, "-m", "benchmarks.load", "--concurrency", str(concurrency),
               "--requests-per-level", str(requests), "--max-audio-seconds", str(args.max_audio_seconds),
               "--warmup", "0", "--timeout-s", "300", "--out", out.name, "--plot", os.devnull]
        if stages:  # Ray's agent exports what the replicas recorded every few seconds
            cmd += ["--metrics-url", METRICS, "--metrics-settle-s", "12"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        level = json.loads(Path(out.name).read_text())["levels"][0]
    summary = {"label": label, "sent": level["sent"], "ok": level["ok"], "rejected": level["rejected"],
               "failed": level["failed"], "lost": level["lost"], "served_at_once": level["max_concurrent_ok"],
               "ttfa_s": {k: level["ttfa_s"][k] for k in ("p50", "p95", "max")},
               "refusal_s": {k: level["rejections"]["latency_s"][k] for k in ("p50", "max")},
               "streams_with_gaps": level["listeners"]["streams_with_underruns"],
               "streams_over_100ms_gap": level["listeners"].get("streams_over_100ms_gap"),
               "max_gap_s": level["listeners"].get("max_gap_s"), "rtf_p50": level["rtf"]["p50"],
               "capacity_after": capacity_now(), **({"stages": level["stages"]} if "stages" in level else {})}
    print(json.dumps(summary), file=sys.stderr, flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--burst", type=int, default=128)
    ap.add_argument("--requests-per-level", type=int, default=16)
    ap.add_argument("--max-audio-seconds", type=float, default=10.0)
    ap.add_argument("--model", default="csm-tiny")
    ap.add_argument("--rows", type=int, default=16, help="max_num_seqs of serve_config.yaml")
    ap.add_argument("--margin", type=float, default=0.2, help="replica.realtime_margin of serve_config.yaml")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report: dict = {"config": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_engine:
        report["engine_alone"] = [engine_alone(args.model, args.rows, args.margin, n) for n in (1, os.cpu_count() or 1)]
        print(json.dumps(report["engine_alone"]), file=sys.stderr, flush=True)
    proc = start_server()
    try:
        report["niceness"] = niceness()
        report["capacity_at_start"] = capacity_now()
        run_load("warm-up", 1, 2, args)
        levels = [run_load(f"c={c}", c, max(c, args.requests_per_level), args, stages=c in (1, 8)) for c in args.levels]
        levels.append(run_load(f"burst {args.burst}", args.burst, args.burst, args))
        time.sleep(5)
        levels.append(run_load("c=4, 5 s after the burst", 4, args.requests_per_level, args))
        report["levels"] = levels
    finally:
        stop_server(proc)
    alone = report.get("engine_alone")
    if alone:
        best = max(level["served_at_once"] for level in report["levels"])
        report["served_over_engine_alone"] = {str(a["threads"]): round(best / max(1, a["capacity"]), 2) for a in alone}
    return emit(report, args.out)


def emit(report: dict, out: Path | None) -> dict:
    """Print the report, and write it to `out` if given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

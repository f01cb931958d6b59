"""Triton's perf_analyzer against csm-serve's Open Inference Protocol: HTTP infer and the gRPC
decoupled stream (latency = first response), at several concurrencies, on csm-tiny.

    PERF_ANALYZER=/path/to/perf_analyzer python -m benchmarks.perf_v2 [--concurrency 1 4 16]

Serves an in-process csm-serve (HTTP + gRPC) on loopback whose engine stops every text segment
at --max-frames (perf_analyzer cannot send request parameters over HTTP, so the cap is the
engine's); writes benchmarks/results/perf-v2-<name>.json with perf_analyzer's own CSV rows.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from deployments.local import start_local
from models import EngineConfig
from serve.settings import ServerSettings

TEXT = "Hello there, this is a benchmark sentence."


def serve(config: EngineConfig, http_port: int, grpc_port: int) -> uvicorn.Server:
    state: dict = {}

    async def main() -> None:
        server = await start_local(config, ServerSettings(), "127.0.0.1", http_port, grpc_port,
                                   max_queued_requests=64, log_level="warning")
        state["server"] = server.http
        await server.run()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    while not (state.get("server") and state["server"].started):
        time.sleep(0.1)
    return state["server"]


def perf(binary: str, mode: str, url: str, concurrency: int, data: str, interval_ms: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        args = [binary, "-m", "csm-1b", "-u", url, "--input-data", data, "--concurrency-range", str(concurrency),
                "--measurement-interval", str(interval_ms), "--stability-percentage", "50", "-f", out.name]
        args += ["-i", "grpc", "--streaming"] if mode == "grpc-stream" else ["-i", "http"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            return {"mode": mode, "concurrency": concurrency, "error": proc.stdout[-2000:] + proc.stderr[-2000:]}
        [row] = list(csv.DictReader(io.StringIO(Path(out.name).read_text())))
    return {"mode": mode, "concurrency": concurrency, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-frames", type=int, default=25, help="frames per text segment (80 ms each)")
    ap.add_argument("--interval-ms", type=int, default=10_000)
    ap.add_argument("--name", default="csm-tiny-cpu")
    args = ap.parse_args()
    binary = os.environ["PERF_ANALYZER"]
    http_port, grpc_port = 28_123, 28_124
    config = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=16, max_frames_cap=args.max_frames)
    serve(config, http_port, grpc_port)
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as data:
        json.dump({"data": [{"text": [TEXT]}]}, data)
    for mode, url in (("http", f"127.0.0.1:{http_port}"), ("grpc-stream", f"127.0.0.1:{grpc_port}")):
        for c in args.concurrency:
            row = perf(binary, mode, url, c, data.name, args.interval_ms)
            rows.append(row)
            if "error" in row:
                print(f"{mode} c={c}: perf_analyzer failed:\n{row['error']}")
                continue
            print(f"{mode:12s} c={c:3d}  {float(row['Inferences/Second']):7.2f} infer/s  "
                  f"p50 {int(row['p50 latency']) / 1000:8.1f} ms  p99 {int(row['p99 latency']) / 1000:8.1f} ms")
    audio_s = args.max_frames * 0.08
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "model": "csm-tiny",
              "audio_seconds_per_request": audio_s, "text": TEXT, "rows": rows,
              "note": "latency: HTTP = whole response; gRPC stream = first response (perf_analyzer on decoupled models)"}
    out = Path(__file__).parent / "results" / f"perf-v2-{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

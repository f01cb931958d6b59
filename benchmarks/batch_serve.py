"""A batch job beside real-time listeners, as users get it: `make serve` with its shipped config.

    python -m benchmarks.batch_serve --out benchmarks/results/batch-serve-csm-tiny-cpu.json

1. `make serve` (serve_config.yaml: real-time admission on, Ray Serve, csm-tiny on this CPU).
2. The listeners alone: benchmarks/load.py at c = --listeners (--requests of --listen-seconds of
   pcm each, bufferless real-time listeners), at `nice -n 19` so the client does not take the
   server's CPU.
3. The same level again while one `POST /v1/audio/speech/batch` of --items items (--item-seconds
   of audio each, seed = index) runs: sent first, the listeners start once it has been running
   --head-start-s. The batch's own time and results are recorded.
4. Every batch item sent alone as `POST /v1/audio/speech` (same text, voice, seed and format):
   is it the same audio? (max absolute difference of the 16-bit samples)

Reported: per listener level, first audio p50/p95/max, refusals, streams with a gap, with one over
100 ms, the longest gap, RTF p50; for the batch, its wall time, items succeeded, the audio per
second of wall time, whether it overlapped the listeners, and the items equal to their single
requests. Nothing is sent anywhere but loopback; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.realtime_serve import URL, emit, run_load, start_server, stop_server

TEXT = "Chapter {i}. The rain had stopped by the time the train pulled into the station, and the platform was empty."


def _items(n: int) -> list[dict]:
    return [{"input": TEXT.format(i=i + 1), "seed": i} for i in range(n)]


def run_batch(items: list[dict], seconds: float, into: dict) -> None:
    start = time.monotonic()
    r = httpx.post(URL + "/v1/audio/speech/batch", timeout=900, json={
        "model": "tts-1", "voice": "alloy", "response_format": "pcm", "max_audio_seconds": seconds, "items": items})
    into.update(status=r.status_code, wall_s=time.monotonic() - start, ended=time.monotonic(),
                body=r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)


def same_as_alone(items: list[dict], results: list[dict], seconds: float) -> list[int]:
    """Per item, the max |difference| of its samples against the same request sent alone (-1: the
    lengths differ or one failed)."""
    diffs = []
    for item, result in zip(items, results, strict=True):
        r = httpx.post(URL + "/v1/audio/speech", timeout=300, json={
            "model": "tts-1", "voice": "alloy", "response_format": "pcm", "max_audio_seconds": seconds, **item})
        if r.status_code != 200 or result.get("status") != "success":
            diffs.append(-1)
            continue
        alone = np.frombuffer(r.content, np.int16).astype(int)
        batched = np.frombuffer(base64.b64decode(result["audio_data"]), np.int16).astype(int)
        diffs.append(int(np.abs(alone - batched).max()) if alone.shape == batched.shape else -1)
    return diffs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listeners", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8, help="listener streams per level (at least --listeners)")
    ap.add_argument("--listen-seconds", type=float, default=6.0)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--item-seconds", type=float, default=4.0)
    ap.add_argument("--head-start-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    load_args = argparse.Namespace(max_audio_seconds=args.listen_seconds)
    requests = max(args.requests, args.listeners)
    report: dict = {"config": {k: str(v) for k, v in vars(args).items()}}
    items = _items(args.items)
    proc = start_server()
    try:
        run_load("warm-up", 1, 2, load_args)
        report["listeners_alone"] = run_load(f"c={args.listeners} alone", args.listeners, requests, load_args)
        batch: dict = {}
        runner = threading.Thread(target=run_batch, args=(items, args.item_seconds, batch))
        runner.start()
        time.sleep(args.head_start_s)
        beside = run_load(f"c={args.listeners} beside the batch", args.listeners, requests, load_args)
        listeners_ended = time.monotonic()
        runner.join(900)
        report["listeners_beside_batch"] = beside
        body = batch.get("body") if isinstance(batch.get("body"), dict) else {}
        results = body.get("results", [])
        audio_s = sum(r.get("audio_seconds") or 0 for r in results)
        report["batch"] = {"status": batch.get("status"), "wall_s": round(batch.get("wall_s", 0), 2),
                           "succeeded": body.get("succeeded"), "failed": body.get("failed"),
                           "audio_s": round(audio_s, 2),
                           "audio_s_per_wall_s": round(audio_s / batch["wall_s"], 2) if batch.get("wall_s") else None,
                           "still_running_when_listeners_ended": batch.get("ended", 0) > listeners_ended}
        print(json.dumps(report["batch"]), file=sys.stderr, flush=True)
        if len(results) == len(items):
            diffs = same_as_alone(items, results, args.item_seconds)
            report["batch"]["max_abs_diff_vs_alone"] = max(diffs)
            report["batch"]["items_equal_alone"] = sum(d == 0 for d in diffs)
            report["batch"]["items_within_2_of_alone"] = sum(0 <= d <= 2 for d in diffs)
            report["batch"]["items_differing"] = [i for i, d in enumerate(diffs) if not 0 <= d <= 2]
    finally:
        stop_server(proc)
    return emit(report, args.out)


if __name__ == "__main__":
    main()

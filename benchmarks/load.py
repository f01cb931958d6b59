"""Load tool: drives a running server's real HTTP API (POST /v1/audio/speech) and reports
what its clients see, per load level.

Modes (both may be given in one run; each value is one level):
  closed loop  `--concurrency 1 4 16`: N workers, each sending its next request as soon as
               the previous one is answered, `--requests-per-level` requests in all.
  open loop    `--rate 8 --duration-s 10`: Poisson arrivals at R requests/s for D seconds,
               at most `--max-requests`; stragglers get `--timeout-s` more, then count as lost.
Default: `--concurrency 1 4 16`.

`--format pcm` (default) streams: time to first audio is taken at the first body byte and
audio seconds are counted exactly from the bytes (24 kHz s16le). Any other format (mp3,
wav, ...) is read as a whole body: time to first audio is the complete response, and audio
seconds come from decoding it (lossy codecs add a little padding).
Every request carries `seed` (`--seed` + its index in the level) and `max_audio_seconds`.

Per level: sent, ok, rejected (429/503: with or without Retry-After, and how fast),
listeners (pcm: each stream played back in real time from its first byte with no client
buffer: gaps heard, streams with gaps, streams held in real time, least buffered audio),
failed (other status, connection errors, timeouts), lost (sent, no outcome: should be 0),
time to first audio p50/p95/p99, RTF p50/p95 (request wall time / audio seconds),
throughput (audio seconds per second of wall time) and errors by status code or exception.
`--metrics-url` (the server's Prometheus text: `/metrics` on the in-process server's port,
127.0.0.1:8080/metrics under `make serve`) adds where the time went per level: each stage's
p50/p95 from the server's own histograms (benchmarks/stages.py; under Ray give
`--metrics-settle-s 12`, Ray exports metrics every few seconds). `--priority batch` sends
every request at batch priority (the OpenAI extension field).
The JSON report goes to stdout and `--out`; `--plot` (default: `--out` with .png) draws
latency percentiles and throughput against the load level.

Run: `python -m benchmarks.load --help`, e.g.
  python -m benchmarks.load --concurrency 1 4 16 --rate 2 8 --duration-s 10 --out load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.playback import PlaybackClock
from models.params import SAMPLE_RATE_HZ as SAMPLE_RATE

from . import stages as stage_metrics

BYTES_PER_SAMPLE = 2  # s16le mono
REJECTED = (429, 503)


@dataclass
class Result:
    """One request's outcome; `outcome` stays "lost" until the request ends one way or another."""

    start: float
    outcome: str = "lost"  # ok | rejected | failed | lost
    status: int | None = None  # HTTP status; None when no response came (connection error, timeout)
    error: str | None = None  # exception name for failures without a status
    ttfa_s: float | None = None
    wall_s: float | None = None
    audio_s: float = 0.0
    retry_after: bool | None = None  # rejections only: was Retry-After present
    retry_after_s: float = 0.0  # its value in seconds (0 when absent or not a number)
    body: bytes = b""  # non-pcm formats: the whole body, decoded after the level
    underruns: int = 0  # pcm: gaps a real-time listener heard (contract/playback.py, at the client)
    min_slack_s: float | None = None  # pcm: the least audio it had buffered when the next bytes came
    max_gap_s: float = 0.0  # pcm: the longest gap it heard


def request_body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    body = {"model": args.model, "voice": args.voice, "input": args.text, "response_format": args.format,
            "seed": seed, "max_audio_seconds": args.max_audio_seconds}
    return body if args.priority == "interactive" else {**body, "priority": args.priority}  # the default: not sent


async def _exchange(client: httpx.AsyncClient, body: dict[str, Any], res: Result, stream: bool) -> None:
    async with client.stream("POST", "/v1/audio/speech", json=body) as r:
        res.status = r.status_code
        if r.status_code != 200:
            await r.aread()
            res.retry_after = "retry-after" in r.headers
            try:  # retry-after-ms first, as OpenAI's SDKs read it
                ms = r.headers.get("retry-after-ms")
                res.retry_after_s = float(ms) / 1000 if ms else float(r.headers.get("retry-after", 0))
            except ValueError:  # an HTTP date: not sent by this server
                res.retry_after_s = 0.0
            res.outcome = "rejected" if r.status_code in REJECTED else "failed"
            return
        nbytes, chunks, listener = 0, [], PlaybackClock()
        async for chunk in r.aiter_bytes():
            if chunk and res.ttfa_s is None and stream:
                res.ttfa_s = time.perf_counter() - res.start
            if chunk and stream:  # plays from the first byte on, 24,000 samples a second
                listener.delivered(time.monotonic(), (nbytes + len(chunk)) // BYTES_PER_SAMPLE - nbytes // BYTES_PER_SAMPLE)
            nbytes += len(chunk)
            if not stream:
                chunks.append(chunk)
        if stream:
            res.audio_s = nbytes // BYTES_PER_SAMPLE / SAMPLE_RATE
            heard = listener.summary()
            res.underruns, res.min_slack_s = heard.underruns, heard.min_slack_s
            res.max_gap_s = getattr(heard, "max_gap_s", 0.0)  # (a replica package older than this tool: 0)
        else:
            res.ttfa_s, res.body = time.perf_counter() - res.start, b"".join(chunks)
        res.outcome, res.error = ("ok", None) if nbytes else ("failed", "empty body")


async def send(client: httpx.AsyncClient, args: argparse.Namespace, seed: int, res: Result) -> None:
    """One request, bounded by --timeout-s; fills `res` (appended by the caller when sent)."""
    try:
        async with asyncio.timeout(args.timeout_s):
            await _exchange(client, request_body(args, seed), res, stream=args.format == "pcm")
    except TimeoutError:
        res.outcome, res.error = "failed", "timeout"
    except Exception as e:  # noqa: BLE001 - connection errors, protocol errors: the request failed
        res.outcome, res.error = "failed", type(e).__name__
    finally:
        res.wall_s = time.perf_counter() - res.start


def make_client(args: argparse.Namespace, max_connections: int | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout_s,
                             limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=None))


async def closed_loop(args: argparse.Namespace, concurrency: int) -> list[Result]:
    """`concurrency` workers send back to back until --requests-per-level have been sent."""
    results: list[Result] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while len(results) < args.requests_per_level:
            res = Result(time.perf_counter())
            seed = args.seed + len(results)
            results.append(res)
            await send(client, args, seed, res)
            if args.honor_retry_after and res.outcome == "rejected":
                await asyncio.sleep(res.retry_after_s or 1.0)  # as the OpenAI SDK does before retrying

    async with make_client(args, concurrency) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


async def open_loop(args: argparse.Namespace, rate: float) -> list[Result]:
    """Poisson arrivals at `rate`/s for --duration-s (at most --max-requests); unfinished
    requests --timeout-s (+1 s) after the last arrival are cancelled and stay lost."""
    rng, results, tasks = random.Random(args.seed), [], []
    async with make_client(args, None) as client:
        t0 = time.perf_counter()
        at = rng.expovariate(rate)
        while at < args.duration_s and len(results) < args.max_requests:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            res = Result(time.perf_counter())
            tasks.append(asyncio.create_task(send(client, args, args.seed + len(results), res)))
            results.append(res)
            at += rng.expovariate(rate)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=args.timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return results


def pct(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": (float(np.percentile(arr, q)) if arr.size else None) for q in qs}


def max_concurrent(results: list[Result]) -> int:
    """The most of these streams playing at one moment (from first audio to last byte)."""
    events = sorted(e for r in results if r.wall_s is not None and r.ttfa_s is not None
                    for e in ((r.start + r.ttfa_s, 1), (r.start + r.wall_s, -1)))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def decode_bodies(results: list[Result]) -> None:
    """Audio seconds of whole-body (non-pcm) responses, decoded after the level so decoding
    does not slow the load; an undecodable body turns the request into a failure."""
    from serve.audio import decode_audio

    for res in results:
        if res.outcome == "ok" and res.body:
            try:
                res.audio_s = len(decode_audio(res.body)) / SAMPLE_RATE
            except Exception as e:  # noqa: BLE001 - any decode error is the server's failure
                res.outcome, res.error = "failed", f"undecodable: {type(e).__name__}"
            res.body = b""


def summarize(results: list[Result], wall_s: float) -> dict[str, Any]:
    by = {k: [r for r in results if r.outcome == k] for k in ("ok", "rejected", "failed", "lost")}
    ok, rejected = by["ok"], by["rejected"]
    audio = [r.audio_s for r in ok]
    errors: dict[str, int] = {}
    for r in by["rejected"] + by["failed"]:
        key = str(r.status) if r.status is not None and r.status != 200 else str(r.error)
        errors[key] = errors.get(key, 0) + 1
    return {
        "sent": len(results), **{k: len(v) for k, v in by.items()},
        "wall_s": wall_s,
        "ttfa_s": {**pct([r.ttfa_s for r in ok if r.ttfa_s is not None], (50, 95, 99)),
                   "max": max((r.ttfa_s for r in ok if r.ttfa_s is not None), default=None)},
        "max_concurrent_ok": max_concurrent(ok),
        "rtf": pct([r.wall_s / r.audio_s for r in ok if r.audio_s > 0 and r.wall_s is not None], (50, 95)),
        "audio_s": {"total": float(sum(audio)), "min": min(audio, default=None), "max": max(audio, default=None)},
        "throughput_audio_s_per_s": sum(audio) / wall_s if wall_s > 0 else 0.0,
        # pcm: each ok stream played back in real time from its first byte, no client buffer
        "listeners": {"underruns": sum(r.underruns for r in ok), "streams_with_underruns": sum(r.underruns > 0 for r in ok),
                      "real_time_streams_held": sum(r.underruns == 0 for r in ok),
                      # the peers' continuity measure: streams whose worst gap is over 100 ms (C100 failures)
                      "streams_over_100ms_gap": sum(r.max_gap_s > 0.1 for r in ok),
                      "max_gap_s": max((r.max_gap_s for r in ok), default=0.0),
                      "min_slack_s": pct([r.min_slack_s for r in ok if r.min_slack_s is not None], (5, 50))},
        "rejections": {
            "with_retry_after": sum(1 for r in rejected if r.retry_after),
            "without_retry_after": sum(1 for r in rejected if not r.retry_after),
            "latency_s": {**pct([r.wall_s for r in rejected if r.wall_s is not None], (50, 95)),
                          "max": max((r.wall_s or 0.0 for r in rejected), default=None)},
            "retry_after_s": {**pct([r.retry_after_s for r in rejected], (50,)),
                              "max": max((r.retry_after_s for r in rejected), default=None)},
        },
        "errors_by_status": dict(sorted(errors.items())),
    }


async def run_level(args: argparse.Namespace, mode: str, value: float) -> dict[str, Any]:
    before = await asyncio.to_thread(stage_metrics.scrape, args.metrics_url) if args.metrics_url else None
    t0 = time.perf_counter()
    if mode == "closed":
        results = await closed_loop(args, int(value))
    else:
        results = await open_loop(args, value)
    wall_s = time.perf_counter() - t0
    decode_bodies(results)
    label = f"c={int(value)}" if mode == "closed" else f"{value:g}/s"
    level = {"label": label, "mode": mode, **({"concurrency": int(value)} if mode == "closed" else {"rate": value})}
    if before is not None:
        await asyncio.sleep(args.metrics_settle_s)
        after = await asyncio.to_thread(stage_metrics.scrape, args.metrics_url)
        level["stages"] = stage_metrics.difference(before, after)
    return {**level, **summarize(results, wall_s)}


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.warmup:
        async with make_client(args, 1) as client:
            for i in range(args.warmup):
                await send(client, args, args.seed + i, Result(time.perf_counter()))
    levels = [("closed", float(c)) for c in args.concurrency or []] + [("open", r) for r in args.rate or []]
    out = []
    for mode, value in levels:
        out.append(await run_level(args, mode, value))
        level = out[-1]
        counts = {k: level[k] for k in ("sent", "ok", "rejected", "failed", "lost")}
        ttfa, heard = level["ttfa_s"], level["listeners"]
        print(f"{level['label']}: {counts}; TTFA p50 {ttfa['p50']} p95 {ttfa['p95']}; rtf {level['rtf']}; "
              f"real-time streams held {heard['real_time_streams_held']} of {level['ok']} "
              f"({heard['underruns']} gaps)", file=sys.stderr)
        if "stages" in level:
            print(f"  stages: {stage_metrics.describe(level['stages'])}", file=sys.stderr)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", help="closed-loop levels (default 1 4 16 without --rate)")
    ap.add_argument("--rate", type=float, nargs="+", help="open-loop levels: Poisson arrivals per second")
    ap.add_argument("--duration-s", type=float, default=10.0, help="open loop: seconds of arrivals per level")
    ap.add_argument("--max-requests", type=int, default=10_000, help="open loop: cap on requests per level")
    ap.add_argument("--requests-per-level", type=int, default=32, help="closed loop: requests per level")
    ap.add_argument("--max-audio-seconds", type=float, default=2.0)
    ap.add_argument("--format", default="pcm", help="pcm streams; others (mp3, wav, ...) are read whole")
    ap.add_argument("--model", default="tts-1")
    ap.add_argument("--voice", default="alloy")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="per request, start to last byte")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--priority", choices=("interactive", "batch"), default="interactive")
    ap.add_argument("--metrics-url", help="the server's Prometheus text endpoint: per-stage timings per level")
    ap.add_argument("--metrics-settle-s", type=float, default=0.0, help="wait before the level's second scrape")
    ap.add_argument("--honor-retry-after", action="store_true",
                    help="closed loop: a rejected client waits Retry-After before its next request (like the "
                         "OpenAI SDK); default: it sends again at once (the worst case for the server)")
    ap.add_argument("--warmup", type=int, default=1, help="requests sent (and not counted) before the levels")
    ap.add_argument("--out", type=Path, help="JSON report")
    ap.add_argument("--plot", type=Path, help="PNG (default: --out with .png)")
    args = ap.parse_args(argv)
    if not args.concurrency and not args.rate:
        args.concurrency = [1, 4, 16]
    if any(c < 1 for c in args.concurrency or []) or any(r <= 0 for r in args.rate or []):
        ap.error("--concurrency values must be >= 1 and --rate values > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    levels = asyncio.run(run_all(args))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    report = {"config": config, "levels": levels}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    plot_path = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if plot_path and levels:
        from .load_plot import plot

        plot(levels, plot_path, f"{args.url}  format={args.format}  max_audio_seconds={args.max_audio_seconds:g}")
    return report


if __name__ == "__main__":
    main()

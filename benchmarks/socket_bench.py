"""Text in as a voice agent sends it: an LLM's reply arrives word by word, and a listener plays
the audio from its first byte with no buffer. Two clients of a running server, same replies,
same pace, same run:

  socket  one WebSocket per reply (/v1/audio/speech/stream): every word sent as it comes,
          committed at the end; the server cuts sentences and speaks them as one stream.
  http    one POST /v1/audio/speech per sentence (pcm, streamed), each sent once its
          sentence is complete and the previous sentence's audio has all arrived (what a
          client of a request-per-text API does, and what the Wyoming bridge did).

Per mode and concurrency (`--concurrency 1 16`: that many agents at once, each speaking
`--replies` replies in turn): first-sentence latency (from the moment its last word was sent
to its first audio) p50/p95, the silence the listener hears after its first audio (gaps
between and inside sentences; zero when generation keeps up) per reply p50/p95/max, and
replies without any gap, over the replies that completed; the others by why (a 429 after
the admission wait, ...). Ratios socket/http are printed. The JSON report goes to stdout and
`--out`.

Run against `make serve` (or `make serve-local`):
  python -m benchmarks.socket_bench --concurrency 1 16 --out socket.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

from contract.playback import PlaybackClock

REPLY = ("Sure, I can help with that. The meeting is moved to Thursday at ten. "
         "I have sent the new invitation to everyone on the list. Anything else?")


def sentences(text: str) -> list[list[str]]:
    """The reply's words grouped by sentence (each word carries its trailing space)."""
    groups, current = [], []
    for word in text.split(" "):
        current.append(word + " ")
        if word.endswith((".", "?", "!")):
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


class Listener:
    """A bufferless listener: its first audio, and the silences it hears after that."""

    def __init__(self) -> None:
        self.clock, self.first_at = PlaybackClock(), None

    def heard(self, num_bytes: int) -> None:
        now = time.monotonic()
        self.first_at = self.first_at or now
        self.clock.delivered(now, num_bytes // 2)


async def socket_reply(args: argparse.Namespace, seed: int) -> dict:
    listener, words_s = Listener(), 1 / args.words_per_s
    url = args.url.replace("http", "ws", 1) + "/v1/audio/speech/stream"
    async with connect(url, subprotocols=["csm-serve"], max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "response_format": "pcm", "audio_transport": "binary", "seed": seed, "voice": args.voice}}))
        first_sentence_sent = None

        async def write() -> None:
            nonlocal first_sentence_sent
            for i, group in enumerate(sentences(REPLY)):
                for word in group:
                    await ws.send(json.dumps({"type": "input_text_buffer.append", "text": word}))
                    await asyncio.sleep(words_s)
                if i == 0:
                    first_sentence_sent = time.monotonic() - words_s
            await ws.send(json.dumps({"type": "input_text_buffer.commit"}))

        writer = asyncio.create_task(write())
        status = "no response"
        async for message in ws:
            if isinstance(message, bytes):
                listener.heard(len(message))
                continue
            event = json.loads(message)
            if event["type"] == "response.done":
                status = event["response"]["status"] if status == "no response" else status
                break
            if event["type"] == "error":
                status = event["error"]["code"] or event["error"]["type"]
        await writer
    return _result(listener, first_sentence_sent, status)


async def http_reply(args: argparse.Namespace, client: httpx.AsyncClient, seed: int) -> dict:
    listener, words_s = Listener(), 1 / args.words_per_s
    ready: asyncio.Queue[str | None] = asyncio.Queue()
    first_sentence_sent = None

    async def write() -> None:
        nonlocal first_sentence_sent
        for i, group in enumerate(sentences(REPLY)):
            for _ in group:
                await asyncio.sleep(words_s)
            if i == 0:
                first_sentence_sent = time.monotonic() - words_s
            ready.put_nowait("".join(group).strip())
        ready.put_nowait(None)

    writer, status, i = asyncio.create_task(write()), "completed", 0
    while (text := await ready.get()) is not None:
        body = {"model": "tts-1", "voice": args.voice, "input": text, "response_format": "pcm", "seed": seed + i}
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            if response.status_code != 200 and status == "completed":
                status = f"http_{response.status_code}"
            async for data in response.aiter_bytes():
                listener.heard(len(data))
        i += 1
    await writer
    return _result(listener, first_sentence_sent, status)


def _result(listener: Listener, first_sentence_sent: float | None, status: str) -> dict:
    """`status`: completed, or why not (the error code, or the HTTP status)."""
    summary = listener.clock.summary()
    latency = listener.first_at - first_sentence_sent if listener.first_at and first_sentence_sent else None
    return {"status": status, "first_latency_s": latency, "gap_s": summary.gap_s, "gaps": summary.underruns}


async def level(args: argparse.Namespace, mode: str, concurrency: int) -> dict:
    async with httpx.AsyncClient(base_url=args.url, timeout=300, limits=httpx.Limits(max_connections=None)) as client:
        async def agent(a: int) -> list[dict]:
            out = []
            for r in range(args.replies):
                seed = 1000 * a + 10 * r
                out.append(await (socket_reply(args, seed) if mode == "socket" else http_reply(args, client, seed)))
            return out

        t0 = time.monotonic()
        results = [r for rs in await asyncio.gather(*(agent(a) for a in range(concurrency))) for r in rs]
    done = [r for r in results if r["status"] == "completed"]
    latencies = [r["first_latency_s"] for r in done if r["first_latency_s"] is not None]
    gaps = [r["gap_s"] for r in done]
    failed = Counter(r["status"] for r in results if r["status"] != "completed")

    def pct(xs: list[float], q: int) -> float | None:
        return round(float(np.percentile(xs, q)), 4) if xs else None

    return {"mode": mode, "concurrency": concurrency, "replies": len(results), "ok": len(done), "failed": dict(failed),
            "first_latency_s": {"p50": pct(latencies, 50), "p95": pct(latencies, 95)},
            "silence_s": {"p50": pct(gaps, 50), "p95": pct(gaps, 95), "max": max(gaps, default=None)},
            "replies_without_gap": sum(r["gaps"] == 0 for r in done), "wall_s": round(time.monotonic() - t0, 1)}


async def run(args: argparse.Namespace) -> list[dict]:
    out = []
    for concurrency in args.concurrency:
        pair = {mode: await level(args, mode, concurrency) for mode in ("socket", "http")}
        s, h = pair["socket"], pair["http"]
        ratio = (s["first_latency_s"]["p50"] / h["first_latency_s"]["p50"]) if h["first_latency_s"]["p50"] else None
        for row in pair.values():
            print(json.dumps(row))
        print(f"c={concurrency}: first-sentence latency p50 socket {s['first_latency_s']['p50']} s, http "
              f"{h['first_latency_s']['p50']} s (socket/http {ratio and round(ratio, 2)}); silence p50 socket "
              f"{s['silence_s']['p50']} s, http {h['silence_s']['p50']} s; replies without a gap socket "
              f"{s['replies_without_gap']}/{s['ok']}, http {h['replies_without_gap']}/{h['ok']} (failed: socket "
              f"{s['failed'] or 0}, http {h['failed'] or 0})")
        out.extend(pair.values())
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--replies", type=int, default=3, help="replies each agent speaks, one after another")
    ap.add_argument("--words-per-s", type=float, default=30.0, help="the LLM's pace")
    ap.add_argument("--voice", default="alloy")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report = asyncio.run(run(args))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

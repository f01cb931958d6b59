"""Barge-in as a voice agent's framework does it (Pipecat's interruption, the Twilio bridge's
`clear`): a reply is streamed into the socket, the listener hears it, the user speaks over it
after `--after-s` of audio and the client sends `response.cancel`. Measured per trial: cancel
to the last audio byte of the reply (what the listener could still hear, before the client
drops it), cancel to `response.done` (status cancelled: the server's row is free), and the
audio bytes that came after the cancel. p50 / max over `--trials`, one socket each.

Run against `make serve` (or `make serve-local`), the client at low priority:
  nice -n 19 python -m benchmarks.interrupt_bench --trials 10 --out interrupt.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from serve.speech_socket.events import ResponseCancel, SessionUpdate, TextAppend, TextCommit

REPLY = "Let me read the whole schedule for you, every appointment of the week, one by one. " * 6


async def trial(url: str, after_s: float, seed: int) -> dict:
    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/v1/audio/speech/stream"
    async with connect(ws_url, subprotocols=["csm-serve"]) as ws:
        await ws.recv()
        session = {"seed": seed, "response_format": "pcm", "audio_transport": "binary"}
        await ws.send(SessionUpdate(type="session.update", session=session).model_dump_json(exclude_unset=True))
        await ws.recv()
        for word in REPLY.split(" "):
            await ws.send(TextAppend(type="input_text_buffer.append", text=word + " ").model_dump_json())
        await ws.send(TextCommit(type="input_text_buffer.commit").model_dump_json())
        heard, cancelled_at, last_audio, after, status = 0, None, None, 0, None
        while True:
            message = await asyncio.wait_for(ws.recv(), 60)
            now = time.monotonic()
            if isinstance(message, bytes):
                heard += len(message)
                if cancelled_at is not None:
                    last_audio, after = now, after + len(message)
                elif heard >= after_s * 48_000:  # 24 kHz, 16-bit
                    cancelled_at = time.monotonic()
                    await ws.send(ResponseCancel(type="response.cancel").model_dump_json())
                continue
            event = json.loads(message)
            if event["type"] == "response.done":
                status = event["response"]["status"]
                break
    return {"status": status, "to_last_audio_s": (last_audio - cancelled_at) if last_audio else 0.0,
            "to_done_s": now - cancelled_at if cancelled_at else None, "bytes_after": after}


def summary(values: list[float]) -> dict:
    return {"p50": float(np.percentile(values, 50)), "max": float(max(values))} if values else {}


async def main(url: str, trials: int, after_s: float) -> dict:
    runs = [await trial(url, after_s, seed) for seed in range(trials)]
    done = [r for r in runs if r["status"] == "cancelled"]
    return {"trials": trials, "after_s": after_s, "cancelled": len(done),
            "to_last_audio_ms": {k: round(v * 1000, 1) for k, v in summary([r["to_last_audio_s"] for r in done]).items()},
            "to_done_ms": {k: round(v * 1000, 1) for k, v in summary([r["to_done_s"] for r in done]).items()},
            "bytes_after": summary([r["bytes_after"] for r in done]), "runs": runs}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--after-s", type=float, default=1.0, help="audio heard before the user barges in")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    report = asyncio.run(main(args.url, args.trials, args.after_s))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)

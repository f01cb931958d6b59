"""Run by test_livekit.py with the LiveKit venv's Python (LiveKit Agents and its OpenAI plugin,
unchanged; nothing of this project is imported): the plugin's TTS pointed at csm-serve's base
URL, used as an agent uses it. Prints one JSON line: what each mode heard."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from livekit.agents import tokenize, tts
from livekit.plugins import openai

TEXT = "Thanks for calling. Your order shipped this morning. It arrives on Friday."


async def heard(stream) -> dict:
    """Frames of one synthesis: their rate, total samples, time to the first, and its pieces."""
    t0, first, rate, samples, pcm, segments = time.monotonic(), None, set(), 0, bytearray(), set()
    async for audio in stream:
        first = first if first is not None else time.monotonic() - t0
        rate.add(audio.frame.sample_rate)
        samples += audio.frame.samples_per_channel
        pcm += bytes(audio.frame.data)
        segments.add(audio.segment_id)
    return {"rates": sorted(rate), "samples": samples, "first_s": first, "segments": len(segments),
            "pcm_head": pcm[:9600].hex()}


async def main(base_url: str) -> dict:
    out = {}
    for model, fmt in (("tts-1", "pcm"), ("tts-1", "mp3"), ("gpt-4o-mini-tts", "pcm")):  # audio bytes; SSE
        plugin = openai.TTS(base_url=base_url, api_key="unused", model=model, voice="alloy", response_format=fmt)
        async with plugin.synthesize(TEXT) as stream:
            out[f"{model}/{fmt}"] = await heard(stream)
        await plugin.aclose()
    # streaming, as an AgentSession drives a non-streaming TTS: LiveKit's own StreamAdapter cuts
    # the LLM's tokens into sentences and synthesizes each as it completes
    plugin = openai.TTS(base_url=base_url, api_key="unused", model="tts-1", voice="alloy", response_format="pcm")
    adapter = tts.StreamAdapter(tts=plugin, sentence_tokenizer=tokenize.blingfire.SentenceTokenizer())
    async with adapter.stream() as stream:
        async def feed():
            for word in TEXT.split(" "):
                stream.push_text(word + " ")
                await asyncio.sleep(0.01)
            stream.end_input()

        feeder = asyncio.create_task(feed())
        out["stream"] = await heard(stream)
        await feeder
    try:  # an unknown voice: the server's 400, as the plugin raises it
        bad = openai.TTS(base_url=base_url, api_key="unused", model="tts-1", voice="nobody", response_format="pcm")
        async with bad.synthesize("Hello.") as stream:
            await heard(stream)
        out["bad_voice"] = "no error"
    except Exception as e:  # noqa: BLE001 - what the plugin raises is what an agent sees
        out["bad_voice"] = f"{type(e).__name__}: {e}"
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(main(sys.argv[1]))))

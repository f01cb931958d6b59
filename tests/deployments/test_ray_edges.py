"""The playground and the Wyoming edge in front of the Ray Serve app (through Serve's proxy),
as they run in a cluster: the page and its assets come from any ingress replica, and
`csm-serve wyoming` speaks through the app's HTTP API."""

import asyncio
import re

import httpx
import pytest
from wyoming.audio import AudioChunk
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from serve.routes.playground import CSP
from tests.wyoming_server import wyoming_client

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


def test_playground_through_ray(app_url):
    page = httpx.get(app_url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    for asset in re.findall(r'(?:href|src)="(/playground/[^"]+)"', page.text):
        response = httpx.get(app_url + asset, timeout=30)
        assert response.status_code == 200 and response.content, asset
    assert httpx.get(app_url + "/playground/%2e%2e/routes/playground.py", timeout=30).status_code == 404


def test_wyoming_through_ray(app_url):
    async def go():
        async with wyoming_client(app_url, max_audio_seconds=0.96) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), 60))
            await client.write_event(Synthesize(text="Through the cluster.", voice=SynthesizeVoice("shimmer")).event())
            events = []
            while not events or events[-1].type not in ("audio-stop", "error"):
                events.append(await asyncio.wait_for(client.read_event(), 60))
            return info, events

    info, events = asyncio.run(go())
    assert "shimmer" in [v.name for v in info.tts[0].voices]
    assert [e.type for e in events if e.type != "audio-chunk"] == ["audio-start", "audio-stop"]
    assert sum(len(AudioChunk.from_event(e).audio) for e in events if e.type == "audio-chunk") == 12 * 1920 * 2

"""LiveKit Agents' OpenAI TTS plugin, unchanged, pointed at csm-serve's base URL (a real
server on loopback: uvicorn, in-process engine, csm-tiny). The plugin runs in the LiveKit venv
(`make test` builds it: LiveKit needs psutil>=7, KServe's SDK here psutil<6), in a process of
its own: plain synthesis in audio-bytes and SSE modes, mp3, LiveKit's own StreamAdapter over
streamed tokens (how an AgentSession drives it), and an error as the plugin raises it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from models import EngineConfig
from replica.config import ReplicaConfig
from tests.local_server import local_server

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-livekit" / "bin" / "python"
FRAMES = 6  # per text segment: the tiny model never says EOS, so each sentence is 0.48 s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=FRAMES)
    with local_server(str(tmp_path_factory.mktemp("voices")), engine=engine, replica=ReplicaConfig(),
                      segment_max_chars=40) as running:
        yield running


def test_livekits_openai_plugin_works_unchanged(server):
    if not PYTHON.exists():
        pytest.fail("the LiveKit venv is missing: `make .venv-livekit/.installed` (make test builds it)")
    url = server[0]
    proc = subprocess.run([str(PYTHON), str(ROOT / "tests" / "clients" / "livekit_check.py"), url + "/v1"],
                          capture_output=True, text=True, timeout=300, check=False, cwd="/")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(json.dumps({k: {f: v for f, v in r.items() if f != "pcm_head"} if isinstance(r, dict) else r
                      for k, r in result.items()}))
    sentences = 3  # segment_max_chars 40: one segment per sentence of the text
    tail = 240  # LiveKit's AudioEmitter gives 10 ms more per synthesis (the tail frame it holds to mark the end)
    for mode in ("tts-1/pcm", "gpt-4o-mini-tts/pcm", "tts-1/mp3"):
        got = result[mode]
        assert got["rates"] == [24_000], (mode, got)
        expected = sentences * FRAMES * 1920 + tail
        assert abs(got["samples"] - expected) <= (0 if mode.endswith("pcm") else 2 * 1152), (mode, got["samples"])
    # the plugin heard the same audio the API sends (no seed in the plugin: compare lengths and
    # a direct request's format, not samples)
    direct = httpx.post(url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": "Thanks for calling.", "response_format": "pcm"}).content
    assert len(direct) == FRAMES * 1920 * 2
    pcm = np.frombuffer(bytes.fromhex(result["tts-1/pcm"]["pcm_head"]), "<i2")
    assert pcm.std() > 100  # audio, not silence
    stream = result["stream"]  # LiveKit's StreamAdapter: one synthesis per sentence, as tokens came
    assert stream["rates"] == [24_000] and stream["samples"] == sentences * (FRAMES * 1920 + tail), stream
    assert result["bad_voice"].startswith("APIStatusError") and "voice 'nobody' not found" in result["bad_voice"], \
        result["bad_voice"]

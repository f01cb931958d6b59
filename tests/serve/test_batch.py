"""POST /v1/audio/speech/batch against a real csm-serve on loopback (uvicorn, in-process engine,
csm-tiny): each item's audio equals the same request sent alone, one bad item fails alone,
vLLM-Omni's request shape is taken as it is, and the bounds hold without leaking a row."""

from __future__ import annotations

import base64
import io
import threading
import time

import av
import httpx
import numpy as np
import pytest

from replica.config import ReplicaConfig
from tests.conftest import wait_engine_idle
from tests.local_server import local_server

URL = "/v1/audio/speech/batch"
CAP = {"max_audio_seconds": 0.48, "temperature": 0.9}  # 6 frames: the tiny model never says EOS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the shipped replica settings (real-time admission on): batch items admitted as make serve admits them
    with local_server(str(tmp_path_factory.mktemp("voices")), replica=ReplicaConfig(), batch_max_audio_s=20.0,
                      batch_max_chars=400) as running:
        yield running


def _alone(url: str, body: dict) -> bytes:
    r = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def _pcm(fmt: str, data: bytes) -> np.ndarray:
    """16-bit samples: raw pcm as it is, the containers through PyAV."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.int32)
    with av.open(io.BytesIO(data)) as f:
        return np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)]).astype(np.int32)


def _same_audio(fmt: str, got: bytes, alone: bytes) -> None:
    """Same seed, same audio: within 2 LSB of 16 bits (the engine's float noise between batch
    sizes, as everywhere in this project); G.711's codes, a step apart at most where that
    noise crosses a code boundary."""
    if fmt == "mulaw":
        codes = np.frombuffer(got, np.uint8).astype(int), np.frombuffer(alone, np.uint8).astype(int)
        assert len(codes[0]) == len(codes[1]) and np.mean(codes[0] != codes[1]) < 0.01
        return
    a, b = _pcm(fmt, got), _pcm(fmt, alone)
    assert len(a) == len(b) and np.abs(a - b).max() <= 2, fmt


def test_each_item_equals_the_same_request_alone(server):
    url, replica = server
    items = [{"input": "The first line of the chapter.", "seed": 1},
             {"input": "A second line, in another voice.", "voice": "echo", "seed": 2, "response_format": "pcm"},
             {"input": "Phone audio for the third.", "seed": 3, "response_format": "mulaw"},
             {"input": "The fourth at sixteen kilohertz.", "seed": 4, "response_format": "flac", "sample_rate": 16000},
             {"input": "And a fifth, at batch priority like the rest.", "seed": 5, "speed": 1.5}]
    seen, done = [], threading.Event()

    def sample():  # (streams, of them batch priority) on the replica while the batch runs
        while not done.is_set():
            stats = replica.stats()
            seen.append((stats.num_streams, stats.num_batch_streams))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    r = httpx.post(url + URL, json={"model": "tts-1", "voice": "alloy", **CAP, "items": items}, timeout=120)
    done.set()
    sampler.join()
    assert r.status_code == 200, r.text
    assert max(n for n, _ in seen) >= 2 and all(n == b for n, b in seen), seen  # together, every one at batch priority
    assert max(n for n, _ in seen) <= 4  # batch_concurrency
    body = r.json()
    assert (body["object"], body["total"], body["succeeded"], body["failed"]) == ("audio.speech.batch", 5, 5, 0)
    for i, (item, result) in enumerate(zip(items, body["results"], strict=True)):
        alone = _alone(url, {"model": "tts-1", "voice": "alloy", "response_format": "wav", **CAP, **item})
        assert result["index"] == i and result["status"] == "success" and result["error"] is None
        _same_audio(item.get("response_format", "wav"), base64.b64decode(result["audio_data"]), alone)
        assert result["usage"] == {"input_tokens": len(item["input"]), "output_tokens": 6,
                                   "total_tokens": len(item["input"]) + 6}
        assert result["audio_seconds"] == 0.48
    assert [r["media_type"] for r in body["results"]] == [
        "audio/wav", "audio/pcm", "audio/PCMU;rate=8000", "audio/flac", "audio/wav"]  # wav: vLLM-Omni's default
    wait_engine_idle(replica)


def test_one_bad_item_fails_alone(server):
    url, replica = server
    items = [{"input": "Good."}, {"input": "Unknown voice.", "voice": "nobody"}, {"input": ""},
             {"input": "Bad format.", "response_format": "ulaw"}, {"input": "x", "priority": "interactive"},
             {"input": "Opus at 44.1k.", "response_format": "opus", "sample_rate": 44100}, {"input": "Good too."}]
    r = httpx.post(url + URL, json={"seed": 9, **CAP, "items": items}, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["success", "error", "error", "error", "error", "error", "success"]
    assert [x["param"] for x in results[1:6]] == ["items[1].voice", "items[2].input", "items[3].response_format",
                                                 "items[4].priority", "items[5].sample_rate"]
    assert results[1]["code"] == "voice_not_found" and "nobody" in results[1]["error"]
    wait_engine_idle(replica)


def test_vllm_omni_clients_shape_is_taken(server):
    """vLLM-Omni's own fields: shared defaults at the top, per-item overrides, its model-only
    fields (task_type, language, request_id...) ignored; results by index with base64 audio."""
    url, _ = server
    body = {"model": "csm-1b", "voice": "alloy", "response_format": "wav", "speed": 1.0, "task_type": "CustomVoice",
            "language": "English", "items": [{"input": "Hello there.", "request_id": "a1", "language": "English"},
                                             {"input": "Goodbye.", "voice": "nova", "request_id": "a2"}],
            "max_audio_seconds": 0.48}
    r = httpx.post(url + URL, json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"].startswith("batch_") and (out["total"], out["succeeded"], out["failed"]) == (2, 2, 0)
    assert [(x["index"], x["status"], x["media_type"]) for x in out["results"]] == [
        (0, "success", "audio/wav"), (1, "success", "audio/wav")]
    assert all(base64.b64decode(x["audio_data"])[:4] == b"RIFF" for x in out["results"])


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"items": []}, "items", "too_short"),
    ({"items": [{"input": "x"}] * 33}, "items", "too_long"),
    ({"items": [{"input": "y" * 300}, {"input": "z" * 300}]}, "items", "batch_too_large"),  # 600 > 400 characters
    ({"items": [{"input": "x"}], "seed": "abc"}, "seed", "int_parsing"),
    ({"items": [{"input": "x"}], "model": "nope"}, "model", "model_not_found"),
    ({"items": [{"input": "x"}], "bogus": 1}, "bogus", None),
])
def test_bounds_and_bad_batches_are_400s_naming_the_field(server, body, param, code):
    r = httpx.post(server[0] + URL, json=body, timeout=60)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param and (code is None or error["code"] == code), error


def test_the_batchs_audio_is_bounded_all_items_together(server, tmp_path_factory):
    """Items past the batch's audio limit end with batch_audio_limit (the ones before are
    whole), and every row comes back."""
    with local_server(str(tmp_path_factory.mktemp("v")), batch_max_audio_s=1.0, batch_concurrency=1) as (url, replica):
        items = [{"input": f"Item number {i}.", "seed": i} for i in range(4)]
        r = httpx.post(url + URL, json={**CAP, "items": items}, timeout=120)
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["success", "success", "error", "error"], results
        assert [x["code"] for x in results[2:]] == ["batch_audio_limit"] * 2
        wait_engine_idle(replica)
        assert replica.stats().num_streams == 0

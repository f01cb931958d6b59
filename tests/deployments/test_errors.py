"""Engine-side errors reach clients as typed, protocol-shaped errors, the same in-process and
through Ray: never Ray's remote traceback (file paths, pid, IP, actor id, ANSI colours).

Each case runs against both servers (csm-tiny, the same fault injected in both, see
tests/faults.py; 2 rows and 1 waiting place in both) and what the clients get is compared:
OpenAI bodies, the SSE stream's error event, v2 HTTP bodies, gRPC status codes and details."""

import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from models import EngineConfig
from tests.conftest import assert_no_leak, wav_bytes
from tests.faults import FAULT_SEED, LATE_FAULT_SEED, fail_steps_with_fault_seed
from tests.local_server import local_server

ENGINE = {"model": "csm-tiny", "device": "cpu", "dtype": "float32", "max_num_seqs": 2}
BACKENDS = ["local", pytest.param("ray", marks=pytest.mark.slow)]


@dataclass(frozen=True)
class Server:
    url: str
    grpc_address: str


@pytest.fixture(scope="module")
def local_url(tmp_path_factory):
    with local_server(str(tmp_path_factory.mktemp("voices")), EngineConfig(**ENGINE), max_queued_requests=1,
                      before_step=fail_steps_with_fault_seed) as (url, replica):
        yield Server(url, f"127.0.0.1:{replica.grpc_port}")


@pytest.fixture(scope="module")
def ray_url(ray_serve, tmp_path_factory):
    from tests.faults import ray_fault_hook
    from tests.ray_serve import deployed

    args = {"engine": ENGINE, "server": {"voices_dir": str(tmp_path_factory.mktemp("voices"))}, "cpus_per_engine": 1,
            "max_queued_requests": 1}
    with deployed(ray_serve, args, ray_fault_hook()) as url:
        yield Server(url, f"127.0.0.1:{ray_serve.grpc_port}")


@pytest.fixture(params=BACKENDS)
def url(request):
    return request.getfixturevalue(f"{request.param}_url")


def _upload(url: str, name: str, transcript: str) -> httpx.Response:
    return httpx.post(url + "/v1/audio/voices", data={"name": name, "transcript": transcript}, timeout=120,
                      files={"audio_sample": ("s.wav", wav_bytes(1.0), "audio/wav")})


def _speak(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", timeout=120, json={
        "model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "pcm",
        "max_audio_seconds": 0.48, **body})


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert_no_leak(r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def voice_prompt_too_long(server: Server) -> dict:
    """Sample + transcript longer than the model's context: refused at upload, not kept."""
    url = server.url
    error = _error(_upload(url, "Too long", "語" * 2000), 400)
    assert error["param"] == "transcript" and "max_seq_len 2048" in error["message"]
    assert "Too long" not in [v["name"] for v in httpx.get(url + "/v1/audio/voices").json()["data"]]
    return error


def prompt_over_max_seq_len(server: Server) -> dict:
    """A voice that fits, with a text that makes the prompt overflow (issue 17's case)."""
    url = server.url
    r = _upload(url, "Long transcript", "a" * 1990)
    assert r.status_code == 200, r.text
    error = _error(_speak(url, voice=r.json()["id"], input="b" * 100), 400)
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert "max_seq_len 2048" in error["message"]
    return error


def failing_engine_step(server: Server) -> dict:
    url = server.url
    r = _speak(url, seed=FAULT_SEED)
    error = _error(r, 500)
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    assert r.headers["x-request-id"] in error["message"]  # the operator's key to the logged traceback
    assert _speak(url, seed=1).status_code == 200  # and the next request is served
    return {**error, "message": error["message"].replace(r.headers["x-request-id"], "<id>")}


def _text(value: str = "Hello there.") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=object))
    return tensor


def _grpc_error(server: Server, **parameters) -> dict:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("csm-1b", [_text()], parameters={"max_audio_seconds": 0.48, **parameters})
    finally:
        client.close()
    assert_no_leak(caught.value.message())
    return {"status": caught.value.status(), "message": caught.value.message()}


def failing_engine_step_over_v2(server: Server) -> dict:
    """The same fault over v2 HTTP (500 + {"error"}) and gRPC (INTERNAL); request ids made alike."""
    r = httpx.post(server.url + "/v2/models/csm-1b/infer", timeout=120, headers={"x-request-id": "same-id"}, json={
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hello there."]}],
        "parameters": {"seed": FAULT_SEED, "max_audio_seconds": 0.48}})
    assert r.status_code == 500 and set(r.json()) == {"error"}, r.text
    assert_no_leak(r.text)
    grpc_error = _grpc_error(server, seed=FAULT_SEED)
    assert grpc_error["status"] == "StatusCode.INTERNAL"
    grpc_error["message"] = grpc_error["message"].split("(request id")[0]  # a fresh id per call
    return {"http": r.json(), "grpc": grpc_error}


def overloaded(server: Server) -> dict:
    """2 rows busy and the 1 waiting place taken by a batch stream (the replica's line, in-process
    and through Ray alike): the next request gets each protocol's overload answer, the same body
    in both; then the streams end and every slot is free again."""
    body = {"model": "tts-1", "voice": "alloy", "input": "Busy for a while. " * 40, "response_format": "pcm",
            "max_audio_seconds": 60}
    stop, streaming = threading.Event(), []

    def hold(seed: int) -> None:
        priority = {"priority": "batch"} if seed == 42 else {}  # interactive streams never wait for seconds
        with httpx.stream("POST", server.url + "/v1/audio/speech", json={**body, "seed": seed, **priority},
                          timeout=120) as r:
            for _ in r.iter_bytes():
                streaming.append(seed)
                if stop.is_set():
                    break

    threads = [threading.Thread(target=hold, args=(40 + i,), daemon=True) for i in range(3)]
    try:
        for i, thread in enumerate(threads):  # one at a time: a burst can meet the queue limit first
            thread.start()
            deadline = time.monotonic() + 60
            while i < 2 and 40 + i not in streaming and time.monotonic() < deadline:
                time.sleep(0.05)  # the first two hold a row each
        time.sleep(1.0)  # the third is in its waiting place
        assert 42 not in streaming
        openai = _error(_speak(server.url), 429)
        r = httpx.post(server.url + "/v2/models/csm-1b/infer", timeout=60, json={
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hi."]}]})
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert_no_leak(r.text)
        grpc_error = _grpc_error(server)
        assert grpc_error["status"] == "StatusCode.UNAVAILABLE"
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return {"openai": openai, "v2": r.json(), "grpc": grpc_error}


CASES = [voice_prompt_too_long, prompt_over_max_seq_len, failing_engine_step, failing_engine_step_over_v2, overloaded]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_engine_errors_are_clean_client_errors(url, case):
    case(url)
    assert httpx.get(url.url + "/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_ray_answers_exactly_like_in_process(local_url, ray_url, case):
    assert case(ray_url) == case(local_url)


def _sse_error_event(server: Server) -> str:
    body = {"model": "tts-1", "voice": "alloy", "input": "Fail later.", "response_format": "pcm",
            "stream_format": "sse", "seed": LATE_FAULT_SEED, "max_audio_seconds": 2.0}
    headers = {"x-request-id": "sse-fault"}  # the 500 message names it: the same on both servers
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert_no_leak("\n".join(lines))
    assert '"speech.audio.delta"' in lines[0] and '"type": "error"' in lines[-1]
    return lines[-1]


@pytest.mark.slow
def test_sse_error_event_is_the_same_through_ray(local_url, ray_url):
    assert _sse_error_event(ray_url) == _sse_error_event(local_url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sse_stream_failing_mid_way_ends_with_an_error_event(request, backend):
    """The status is sent before the fault: the event stream ends with an OpenAI-shaped error
    event instead of `speech.audio.done`, and nothing in it leaks."""
    assert '"code": "internal_error"' in _sse_error_event(request.getfixturevalue(f"{backend}_url"))

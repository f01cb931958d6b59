"""Engine-side errors reach clients as typed, protocol-shaped errors, the same in-process and
through Ray: never Ray's remote traceback (file paths, pid, IP, actor id, ANSI colours).

Each case runs against both servers (csm-tiny, the same fault injected in both, see
tests/faults.py) and the bodies are compared with each other."""


import httpx
import pytest

from models import EngineConfig
from tests.conftest import assert_no_leak, wav_bytes
from tests.faults import FAULT_SEED, LATE_FAULT_SEED, fail_steps_with_fault_seed
from tests.local_server import local_server

ENGINE = {"model": "csm-tiny", "device": "cpu", "dtype": "float32", "max_num_seqs": 2}
BACKENDS = ["local", pytest.param("ray", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def local_url(tmp_path_factory):
    with local_server(str(tmp_path_factory.mktemp("voices")), EngineConfig(**ENGINE),
                      before_step=fail_steps_with_fault_seed) as (url, _):
        yield url


@pytest.fixture(scope="module")
def ray_url(ray_serve, tmp_path_factory):
    from tests.faults import ray_fault_hook
    from tests.ray_serve import deployed

    args = {"engine": ENGINE, "server": {"voices_dir": str(tmp_path_factory.mktemp("voices"))}, "cpus_per_engine": 1}
    with deployed(ray_serve, args, ray_fault_hook()) as url:
        yield url


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


def voice_prompt_too_long(url: str) -> dict:
    """Sample + transcript longer than the model's context: refused at upload, not kept."""
    error = _error(_upload(url, "Too long", "語" * 2000), 400)
    assert error["param"] == "transcript" and "max_seq_len 2048" in error["message"]
    assert "Too long" not in [v["name"] for v in httpx.get(url + "/v1/audio/voices").json()["data"]]
    return error


def prompt_over_max_seq_len(url: str) -> dict:
    """A voice that fits, with a text that makes the prompt overflow (issue 17's case)."""
    r = _upload(url, "Long transcript", "a" * 1990)
    assert r.status_code == 200, r.text
    error = _error(_speak(url, voice=r.json()["id"], input="b" * 100), 400)
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert "max_seq_len 2048" in error["message"]
    return error


def failing_engine_step(url: str) -> dict:
    r = _speak(url, seed=FAULT_SEED)
    error = _error(r, 500)
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    assert r.headers["x-request-id"] in error["message"]  # the operator's key to the logged traceback
    assert _speak(url, seed=1).status_code == 200  # and the next request is served
    return {**error, "message": error["message"].replace(r.headers["x-request-id"], "<id>")}


CASES = [voice_prompt_too_long, prompt_over_max_seq_len, failing_engine_step]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_engine_errors_are_clean_client_errors(url, case):
    case(url)
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_ray_answers_exactly_like_in_process(local_url, ray_url, case):
    assert case(ray_url) == case(local_url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sse_stream_failing_mid_way_ends_with_an_error_event(request, backend):
    """The status is sent before the fault: the event stream ends with an OpenAI-shaped error
    event instead of `speech.audio.done`, and nothing in it leaks."""
    url = request.getfixturevalue(f"{backend}_url")
    body = {"model": "tts-1", "voice": "alloy", "input": "Fail later.", "response_format": "pcm",
            "stream_format": "sse", "seed": LATE_FAULT_SEED, "max_audio_seconds": 2.0}
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert_no_leak("\n".join(lines))
    assert '"speech.audio.delta"' in lines[0] and '"type": "error"' in lines[-1]
    assert '"code": "internal_error"' in lines[-1]

"""Real-time admission and priorities end to end, through the real in-process server (uvicorn,
the gRPC server, csm-tiny) with the official clients: interactive streams are admitted up to
the replica's real-time capacity, the next one is refused at once with 429 + a Retry-After from
the running streams' remaining audio (OpenAI) or 503 / UNAVAILABLE (v2, HTTP and gRPC); a batch
request waits for a row as long as Triton's `timeout` allows; batch requests (the OpenAI
extension `priority`, Triton's `priority` 2) are admitted beside them, paused while the
interactive streams need the step, and complete afterwards with the audio they give alone.

The capacity comes from a fixed step-time model (30 ms at one row, 60 ms at two: two streams
keep real time with the 20% margin, three do not), set on the replica and no longer learned,
and no stream counts as behind its listener: the rule is what is tested here, deterministically
on any machine (its learning and playback clocks have tests of their own, tests/replica)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import EngineConfig
from replica.config import ReplicaConfig
from tests.conftest import assert_no_leak, wait_engine_idle
from tests.local_server import local_server

ENGINE = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=25)
LONG = "One sentence to speak here. " * 100  # longer than anything here waits
BATCH = {"seed": 9, "max_audio_seconds": 0.96}  # 12 frames


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    replica_config = ReplicaConfig(realtime_admission=True, admission_wait_s=0.5)
    with local_server(str(tmp_path_factory.mktemp("voices")), engine=ENGINE, replica=replica_config) as (url, replica):
        replica.step_times.observe = lambda rows, seconds: None  # the fixed profile below is all it knows
        replica.step_times.prior_excess = 0.0
        replica.step_times.seed(((1, 0.030), (2, 0.060)))
        replica.step_times.seed = lambda profile: None  # not re-profiled when idle either
        replica.pipeline.is_behind = lambda: False
        yield url, replica


def _stats_until(replica, predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate(stats := replica.stats()):
        assert time.monotonic() < deadline, f"not reached: {stats}"
        time.sleep(0.02)
    return stats


class Listener:
    """An interactive stream held open: its first audio bytes read, the rest left unread."""

    def __init__(self, url: str, seed: int) -> None:
        self.client = httpx.Client(timeout=60)
        self.response = self.client.send(self.client.build_request("POST", url + "/v1/audio/speech", json={
            "model": "tts-1", "input": LONG, "voice": "alloy", "response_format": "pcm", "seed": seed}), stream=True)
        assert self.response.status_code == 200
        self.chunks = self.response.iter_bytes()  # kept: a dropped iterator closes the response
        assert next(self.chunks)

    def close(self) -> None:
        self.response.close()
        self.client.close()


def _batch_openai(url: str, priority: str) -> bytes:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    return client.audio.speech.create(model="tts-1", voice="alloy", input="Narrate this later.", response_format="pcm",
                                      extra_body={**BATCH, "priority": priority}).content


def _batch_v2(grpc_address: str, priority: int) -> np.ndarray:
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array(["Narrate this later."], dtype=object))
    with grpcclient.InferenceServerClient(grpc_address) as client:
        return client.infer("csm-1b", [text], parameters={**BATCH, "voice": "alloy"}, priority=priority).as_numpy("audio")


def test_interactive_streams_stop_at_the_realtime_bound_and_batch_ones_wait_for_the_step(server):
    url, replica = server
    grpc_address = f"127.0.0.1:{replica.grpc_port}"
    listeners = [Listener(url, seed) for seed in (1, 2)]
    try:
        stats = _stats_until(replica, lambda s: s.num_streams == 2)
        assert (stats.realtime_capacity, stats.headroom) == (2, 0)  # rows are free: real time is the bound

        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:  # no headroom expected soon: 429 at once
            _batch_openai(url, "interactive")
        assert time.monotonic() - started < 0.5
        headers = refused.value.response.headers  # when the listeners' long texts end, not a constant
        assert int(headers["retry-after"]) >= 5 and int(headers["retry-after-ms"]) >= 5000
        assert_no_leak(refused.value.response.text)

        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array(["Hello."], dtype=object))
        with httpclient.InferenceServerClient(url.split("//")[1]) as http:
            started = time.monotonic()
            with pytest.raises(InferenceServerException, match="at capacity") as refused_v2:
                http.infer("csm-1b", [text])
            assert time.monotonic() - started < 0.5 and refused_v2.value.status() == "503"
        text_grpc = grpcclient.InferInput("text", [1], "BYTES")
        text_grpc.set_data_from_numpy(np.array(["Hello."], dtype=object))
        with grpcclient.InferenceServerClient(grpc_address) as grpc_:
            with pytest.raises(InferenceServerException, match="at capacity") as refused_v2:
                grpc_.infer("csm-1b", [text_grpc])
        assert refused_v2.value.status() == "StatusCode.UNAVAILABLE"

        results: dict = {}
        batches = [threading.Thread(target=lambda: results.update(openai=_batch_openai(url, "batch"))),
                   threading.Thread(target=lambda: results.update(v2=_batch_v2(grpc_address, 2)))]
        for thread in batches:
            thread.start()
        stats = _stats_until(replica, lambda s: s.num_batch_streams == 2 and s.engine.num_paused == 2)
        paused, until = [], time.monotonic() + 0.5  # the interactive streams step on; the batch rows stay paused
        while time.monotonic() < until:
            paused.append(replica.stats().engine.num_paused)
            time.sleep(0.02)
        # (an interactive stream between two of its sentences leaves the step to a batch row for a moment)
        assert sum(p == 2 for p in paused) >= 0.6 * len(paused) and not results, paused
        assert replica.stats().num_streams == 4
        # every row is held now: a batch request waits for one, as long as Triton's `timeout` allows
        with httpclient.InferenceServerClient(url.split("//")[1]) as http:
            with pytest.raises(InferenceServerException, match="Request timeout expired") as expired:
                http.infer("csm-1b", [text], priority=2, timeout=100_000)  # 0.1 s to start
        assert expired.value.status() == "503"
        with grpcclient.InferenceServerClient(grpc_address) as grpc_:
            with pytest.raises(InferenceServerException, match="Request timeout expired") as expired:
                grpc_.infer("csm-1b", [text_grpc], priority=2, timeout=100_000)
        assert expired.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        for listener in listeners:
            listener.close()
    for thread in batches:
        thread.join(60)
    assert set(results) == {"openai", "v2"}  # the step is theirs now: both complete

    alone_openai = _batch_openai(url, "interactive")
    alone_v2 = _batch_v2(grpc_address, 0)
    # The same codes (tests/models/test_engine.py checks them exactly); the PCM through Mimi
    # decodes batched with other streams' chunks, so within float rounding: 1 LSB of int16.
    assert len(results["openai"]) == len(alone_openai) == 12 * 1920 * 2  # 12 frames of int16
    np.testing.assert_allclose(np.frombuffer(results["openai"], np.int16), np.frombuffer(alone_openai, np.int16), atol=1)
    np.testing.assert_allclose(results["v2"], alone_v2, atol=1e-4)
    wait_engine_idle(replica)
    assert replica.stats().num_streams == 0

"""The Open Inference Protocol with the official tritonclient (HTTP and gRPC) against a real
csm-serve on loopback, twice: in-process (uvicorn + the in-process gRPC server, csm-tiny) and
through Ray Serve's HTTP and gRPC proxies (slow-marked): metadata, config, infer in binary and
JSON tensors, the decoupled gRPC stream, statistics, the same audio as the OpenAI edge,
cancellation (a cancelled stream; a closed connection, which Serve's proxy turns into a
cancelled handler), overload, auth, and hostile input. Every error any client gets also goes
through the leak check (tests/conftest.py)."""

from __future__ import annotations

import base64
import json
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from models import EngineConfig
from tests.conftest import assert_no_leak, wait_engine_idle
from tests.local_server import local_server

ENGINE = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=25)  # 2 s per segment
PARAMS = {"seed": 5, "voice": "nova", "max_audio_seconds": 0.96}  # 12 frames
LONG = "One sentence to speak here. " * 100  # about 24 s of audio: longer than any wait here


@dataclass(frozen=True)
class Target:
    """A running server: its HTTP base URL, its gRPC address, and a replica's stats."""

    kind: str
    url: str
    grpc_address: str
    stats: Callable


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def server(request, tmp_path_factory):
    """The same server in-process (2 streams may wait for its 4 rows) and through Ray (4 slots,
    2 queued in Serve's router)."""
    voices = str(tmp_path_factory.mktemp("voices"))
    if request.param == "local":
        with local_server(voices, engine=ENGINE) as (url, replica):
            yield Target("local", url, f"127.0.0.1:{replica.grpc_port}", replica.stats)
        return
    from tests.deployments.conftest import replica_stats
    from tests.ray_serve import deployed

    runtime = request.getfixturevalue("ray_serve")
    args = {"engine": {**ENGINE.model_dump(), "dtype": "float32"}, "server": {"voices_dir": voices},
            "cpus_per_engine": 1, "max_queued_requests": 2}
    with deployed(runtime, args) as url:
        yield Target("ray", url, f"127.0.0.1:{runtime.grpc_port}", replica_stats)


def text_input(module, text: str = "Hello there.", binary: bool = True):
    tensor = module.InferInput("text", [1], "BYTES")
    if module is httpclient:
        tensor.set_data_from_numpy(np.array([text], dtype=object), binary_data=binary)
    else:
        tensor.set_data_from_numpy(np.array([text], dtype=object))
    return tensor


@pytest.fixture
def tc(server):
    """tritonclient's HTTP and gRPC clients for the server (closed after the test)."""
    http = httpclient.InferenceServerClient(server.url.split("//")[1])
    grpc_ = grpcclient.InferenceServerClient(server.grpc_address)
    yield http, grpc_
    http.close()
    grpc_.close()


def test_metadata_and_config(server, tc):
    http, grpc_ = tc
    assert http.is_server_live() and http.is_server_ready() and grpc_.is_server_live() and grpc_.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "csm-serve" and "binary_tensor_data" in meta["extensions"]
    assert list(grpc_.get_server_metadata().extensions) == meta["extensions"]
    models = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    for model in models:
        assert http.is_model_ready(model) and grpc_.is_model_ready(model)
        assert http.is_model_ready(model, "1") and not http.is_model_ready(model, "2")
        m = http.get_model_metadata(model)
        assert (m["inputs"], m["outputs"]) == ([{"name": "text", "datatype": "BYTES", "shape": [1]}],
                                              [{"name": "audio", "datatype": "FP32", "shape": [-1]}])
        g = grpc_.get_model_metadata(model)
        assert g.name == model and [(t.name, t.datatype, list(t.shape)) for t in g.outputs] == [("audio", "FP32", [-1])]
    config = http.get_model_config("csm-1b")
    assert config["max_batch_size"] == 0 and config["model_transaction_policy"] == {"decoupled": True}
    assert config["instance_group"] == [{"name": "engine", "kind": "KIND_CPU", "count": 1}]
    grpc_config = grpc_.get_model_config("csm-1b").config
    assert grpc_config.model_transaction_policy.decoupled and grpc_config.instance_group[0].count == 1


def test_health_and_ready_bodies_follow_the_open_inference_protocol(server):
    """KServe's clients read the bodies, Triton's the status codes: both are satisfied."""
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    for path in ("/v2/models/tts-1/ready", "/v2/models/tts-1/versions/1/ready"):
        r = httpx.get(server.url + path)
        assert r.status_code == 200 and r.json() == {"name": "tts-1", "ready": True}
    assert httpx.get(server.url + "/v2/models/tts-1/versions/2/ready").status_code == 404


def test_model_name_and_version_in_the_body_must_match_the_url(server):
    """KServe's client sends `model_name` beside the spec's fields: accepted when it names the
    URL's model, refused with 400 naming the field when it does not."""
    body = {"id": "b1", "model_name": "tts-1", "model_version": "1", "parameters": PARAMS,
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hello there."]}]}
    ok = httpx.post(server.url + "/v2/models/tts-1/infer", json=body, timeout=60)
    assert ok.status_code == 200 and ok.json()["model_name"] == "tts-1" and ok.json()["id"] == "b1"
    for field, value in (("model_name", "csm-1b"), ("model_version", "7")):
        r = httpx.post(server.url + "/v2/models/tts-1/infer", json={**body, field: value}, timeout=30)
        assert r.status_code == 400 and r.json()["error"].startswith(f"{field} '{value}' in the request body")
    no_id = {k: v for k, v in body.items() if k != "id"}
    assert "id" not in httpx.post(server.url + "/v2/models/tts-1/infer", json=no_id, timeout=60).json()


def test_kserve_clients_over_rest_and_grpc(server, tc):
    """KServe's own SDK (kserve 0.21: the async REST client with protocol v2, the async gRPC
    client), in a process of its own: live, ready, model ready, infer in JSON and binary
    tensors and over gRPC with the same audio as tritonclient's, and errors as exceptions."""
    proc = subprocess.run([sys.executable, "-m", "tests.serve.kserve_client", server.url, server.grpc_address],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    rest, over_grpc = result["rest"], result["grpc"]
    assert (rest["live"], rest["ready"], rest["model_ready"], rest["unknown_model_ready"]) == (True, True, True, False)
    assert (over_grpc["live"], over_grpc["ready"], over_grpc["model_ready"]) == (True, True, True)
    http, _ = tc
    params = {"voice": "nova", "seed": 5, "max_audio_seconds": 1}
    want = http.infer("csm-1b", [text_input(httpclient)], parameters=params).as_numpy("audio")
    assert want.shape == (24_000,)  # 1 s, cut to the sample
    for got in (rest["infer"], rest["infer_binary"], over_grpc["infer"]):
        assert got["id"] == "kserve-1" and got["model_name"] in ("csm-1b", "tts-1")
        assert np.array_equal(np.frombuffer(base64.b64decode(got["audio"]), "<f4"), want)
    assert rest["bad_voice"]["status"] == 400 and "nobody" in rest["bad_voice"]["message"]  # the body's error
    assert over_grpc["unknown_model"]["code"] == "NOT_FOUND" and "nope" in over_grpc["unknown_model"]["details"]
    assert_no_leak(rest["bad_voice"]["body"] + over_grpc["unknown_model"]["details"])  # (the SDK adds the URL)


def test_infer_binary_json_grpc_and_openai_give_the_same_audio(server, tc):
    http, grpc_ = tc
    binary = http.infer("tts-1", [text_input(httpclient)], parameters=PARAMS)
    assert binary.get_response()["parameters"]["sample_rate"] == 24_000
    as_json = http.infer("tts-1", [text_input(httpclient, binary=False)], parameters=PARAMS,
                         outputs=[httpclient.InferRequestedOutput("audio", binary_data=False)])
    over_grpc = grpc_.infer("tts-1", [text_input(grpcclient)], parameters=PARAMS, request_id="mine-1")
    assert over_grpc.get_response().id == "mine-1"
    audio = binary.as_numpy("audio")
    assert audio.dtype == np.float32 and audio.shape == (12 * 1920,) and np.abs(audio).max() <= 1.0
    assert np.array_equal(audio, as_json.as_numpy("audio")) and np.array_equal(audio, over_grpc.as_numpy("audio"))
    openai_pcm = httpx.post(server.url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "input": "Hello there.", "response_format": "pcm", **PARAMS}).content
    pcm = np.frombuffer(openai_pcm, "<i2").astype(int)
    assert len(pcm) == len(audio) and np.abs(np.rint(audio * 32767).astype(int) - pcm).max() <= 1


def test_grpc_stream_is_decoupled_and_equals_the_unary_audio(server, tc):
    _, grpc_ = tc
    params = {**PARAMS, "max_audio_seconds": 1.92}
    unary = grpc_.infer("csm-1b", [text_input(grpcclient)], parameters=params).as_numpy("audio")
    for empty_final in (False, True):
        responses: queue.Queue = queue.Queue()
        grpc_.start_stream(callback=lambda result, error: responses.put((time.monotonic(), result, error)))
        grpc_.async_stream_infer("csm-1b", [text_input(grpcclient)], parameters=params, request_id="s1",
                                 enable_empty_final_response=empty_final)
        got = []
        while not got or not got[-1][1].get_response().parameters["triton_final_response"].bool_param:
            t, result, error = responses.get(timeout=60)
            assert error is None, error
            got.append((t, result))
        grpc_.stop_stream()
        chunks = [r.as_numpy("audio") for _, r in got if r.as_numpy("audio") is not None]
        assert len(chunks) >= 4 and np.array_equal(np.concatenate(chunks), unary)
        assert all(r.get_response().id == "s1" for _, r in got)
        assert (got[-1][1].as_numpy("audio") is None) == empty_final  # the empty final response, when asked
        assert got[0][0] < got[-1][0] - 0.1  # chunks arrive as generated, not at the end


def test_statistics_count_inferences(server, tc):
    http, grpc_ = tc
    before = http.get_inference_statistics("tts-1-hd")["model_stats"][0]
    http.infer("tts-1-hd", [text_input(httpclient)], parameters=PARAMS)
    grpc_.infer("tts-1-hd", [text_input(grpcclient)], parameters=PARAMS)
    with pytest.raises(InferenceServerException):
        http.infer("tts-1-hd", [text_input(httpclient)], parameters={"voice": "nobody"})
    after = http.get_inference_statistics("tts-1-hd")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 2 == after["execution_count"] - before["execution_count"]
    stats = after["inference_stats"]
    assert stats["success"]["count"] - before["inference_stats"]["success"]["count"] == 2
    assert stats["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert stats["success"]["ns"] > stats["queue"]["ns"] > 0 and after["last_inference"] > 0
    grpc_stats = grpc_.get_inference_statistics("tts-1-hd").model_stats[0]
    assert grpc_stats.inference_count == after["inference_count"]
    if server.kind == "ray":  # Ray's metrics agent exports these: tests/deployments/test_ray_app.py
        return
    # and in the tts_* metrics, with the protocol as a label
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    counted = {(s.labels["protocol"], s.labels["outcome"]): s.value for s in families["tts_requests"].samples
               if s.name == "tts_requests_total"}
    assert counted[("v2-http", "ok")] >= 1 and counted[("v2-grpc", "ok")] >= 1
    assert counted[("v2-http", "client_error")] >= 1


def test_cancelled_stream_and_closed_connection_free_their_slots(server, tc):
    """A cancelled gRPC stream, and an HTTP infer whose connection closes mid-generation (under
    Ray: Serve's proxy cancels the ingress handler), each free their slot at once."""
    _, grpc_ = tc
    responses: queue.Queue = queue.Queue()
    grpc_.start_stream(callback=lambda result, error: responses.put((result, error)))
    grpc_.async_stream_infer("csm-1b", [text_input(grpcclient, LONG)], parameters={"seed": 1})
    assert responses.get(timeout=60)[1] is None
    assert server.stats().engine.num_kv_slots_used == 1
    grpc_.stop_stream(cancel_requests=True)
    wait_engine_idle(server)
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [LONG]}]}).encode()
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v2/models/csm-1b/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while not server.stats().engine.num_kv_slots_used and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.stats().engine.num_kv_slots_used == 1
    wait_engine_idle(server)


def test_overload_is_503_over_http_and_unavailable_over_grpc(server, tc):
    """4 rows + 2 waiting places in the replica's line (in-process and through Ray): four streams
    play, two batch ones wait, the next request is refused at once with the protocol's overload
    answer, and once the streams are cancelled every slot is free."""
    _, grpc_ = tc
    clients, responses = [], []

    def open_stream(i: int, priority: int = 0) -> None:
        client, own = grpcclient.InferenceServerClient(server.grpc_address), queue.Queue()
        client.start_stream(callback=lambda result, error: own.put((result, error)))
        client.async_stream_infer("csm-1b", [text_input(grpcclient, LONG)], parameters={"seed": 20 + i},
                                  priority=priority)
        clients.append(client)
        responses.append(own)

    try:
        # One at a time: Serve's router counts simultaneous arrivals as queued until assigned,
        # so a burst of six could refuse one of them before the four slots take theirs.
        for i in range(4):
            open_stream(i)
            assert responses[i].get(timeout=60)[1] is None  # it streams audio: it holds a row
        if server.kind == "local":  # (under Ray a stats call would queue behind the 4 busy slots)
            assert server.stats().num_streams == 4
        for i in (4, 5):  # these two wait in the replica's line (batch priority: interactive ones never do)
            open_stream(i, priority=2)
            time.sleep(1.0)
            assert responses[i].empty()  # waiting: no audio, and not refused
        busy = httpx.post(server.url + "/v2/models/csm-1b/infer", timeout=30, json={
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hi."]}]})
        assert busy.status_code == 503 and busy.headers["retry-after"] and "capacity" in busy.json()["error"]
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            grpc_.infer("csm-1b", [text_input(grpcclient)])
    finally:
        for client in clients:
            client.stop_stream(cancel_requests=True)
            client.close()
    wait_engine_idle(server, timeout_s=30)


def test_overload_and_api_keys(tmp_path):
    engine = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=1, max_frames_cap=25)
    with local_server(str(tmp_path), engine=engine, max_queued_requests=0, api_keys=["k1"]) as (url, backend):
        http = httpclient.InferenceServerClient(url.split("//")[1])
        grpc_ = grpcclient.InferenceServerClient(f"127.0.0.1:{backend.grpc_port}")
        with pytest.raises(InferenceServerException, match="API key"):
            http.get_model_metadata("csm-1b")
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            grpc_.get_model_metadata("csm-1b")
        headers = {"authorization": "Bearer k1"}  # gRPC metadata keys are lowercase
        assert http.get_model_metadata("csm-1b", headers=headers)["name"] == "csm-1b"
        assert grpc_.get_model_metadata("csm-1b", headers=headers).name == "csm-1b"
        responses: queue.Queue = queue.Queue()
        grpc_.start_stream(callback=lambda result, error: responses.put((result, error)), headers=headers)
        grpc_.async_stream_infer("csm-1b", [text_input(grpcclient, LONG)], parameters={"seed": 1})
        assert responses.get(timeout=60)[1] is None  # the one slot is taken
        busy = httpx.post(url + "/v2/models/csm-1b/infer", headers=headers, timeout=30, json={
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hi."]}]})
        assert busy.status_code == 503 and busy.headers["retry-after"] and "capacity" in busy.json()["error"]
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            grpc_.infer("csm-1b", [text_input(grpcclient)], headers=headers)
        grpc_.stop_stream(cancel_requests=True)
        wait_engine_idle(backend)


def _infer_body(inputs=None, parameters=None, outputs=None) -> dict:
    body = {"inputs": inputs if inputs is not None else [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hello."]}]}
    if parameters is not None:
        body["parameters"] = parameters
    if outputs is not None:
        body["outputs"] = outputs
    return body


def _binary(text: bytes, header_length: str | None = None, extra: int = 0) -> tuple[bytes, dict]:
    raw = serialize_byte_tensor(np.array([text], dtype=object)).item()
    header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    length = header_length if header_length is not None else str(len(header) + extra)
    return header + raw, {"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"}


TEXT = {"name": "text", "shape": [1], "datatype": "BYTES"}
HOSTILE = {
    "unknown model": ("/v2/models/nope/infer", _infer_body(), None, 404),
    "unknown version": ("/v2/models/csm-1b/versions/7/infer", _infer_body(), None, 404),
    "no inputs": ("", _infer_body(inputs=[]), None, 400),
    "extra input": ("", _infer_body(inputs=[{**TEXT, "data": ["a"]}, {**TEXT, "name": "more", "data": ["b"]}]), None, 400),
    "wrong datatype": ("", _infer_body(inputs=[{**TEXT, "datatype": "FP32", "data": [1.0]}]), None, 400),
    "wrong shape": ("", _infer_body(inputs=[{**TEXT, "shape": [2], "data": ["a", "b"]}]), None, 400),
    "empty text": ("", _infer_body(inputs=[{**TEXT, "data": [""]}]), None, 400),
    "text over 4096": ("", _infer_body(inputs=[{**TEXT, "data": ["a" * 4097]}]), None, 400),
    "not JSON": ("", b"{nope", None, 400),
    "non-UTF-8 bytes": ("", *_binary(b"\xff\xfe\xfa"), 400),
    "header longer than body": ("", *_binary(b"Hi.", extra=10_000), 400),
    "header length not a number": ("", *_binary(b"Hi.", header_length="ten"), 400),
    "unknown parameter": ("", _infer_body(parameters={"volume": 11}), None, 400),
    "out-of-range parameter": ("", _infer_body(parameters={"temperature": 9.0}), None, 400),
    "unknown voice": ("", _infer_body(parameters={"voice": "nobody"}), None, 400),
    "unknown output": ("", _infer_body(outputs=[{"name": "video"}]), None, 400),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_gets_a_4xx_and_the_server_keeps_serving(server, case):
    url = server.url
    path, body, headers, status = HOSTILE[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + (path or "/v2/models/csm-1b/infer"), content=content, headers=headers or {}, timeout=30)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert_no_leak(r.text)
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200
    wait_engine_idle(server)


@pytest.mark.parametrize(("inputs", "params", "code"), [
    ([("text", "FP32")], {}, "INVALID_ARGUMENT"),
    ([("text", "BYTES")], {"volume": 3}, "INVALID_ARGUMENT"),
    ([("text", "BYTES")], {"top_k": 0}, "INVALID_ARGUMENT"),
    ([("text", "BYTES"), ("more", "BYTES")], {}, "INVALID_ARGUMENT"),
])
def test_hostile_grpc_requests_get_the_matching_status(server, tc, inputs, params, code):
    _, grpc_ = tc
    tensors = []
    for name, datatype in inputs:
        t = grpcclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(np.array(["Hi."], dtype=object) if datatype == "BYTES" else np.ones(1, np.float32))
        tensors.append(t)
    with pytest.raises(InferenceServerException, match=code) as e:
        grpc_.infer("csm-1b", tensors, parameters=params)
    assert_no_leak(str(e.value))
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc_.infer("nope", [text_input(grpcclient)])

"""The Open Inference Protocol through Ray Serve: HTTP through Serve's HTTP proxy and Triton's
gRPC service through Serve's gRPC proxy, with the official tritonclient."""

import queue
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

PARAMS = {"seed": 4, "voice": "echo", "max_audio_seconds": 0.96}  # 12 frames


def _text(module):
    tensor = module.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["Through the proxies."], dtype=object))
    return tensor


@pytest.fixture
def tc(app_url, ray_serve):
    http = httpclient.InferenceServerClient(app_url.split("//")[1])
    grpc_ = grpcclient.InferenceServerClient(f"127.0.0.1:{ray_serve.grpc_port}")
    yield http, grpc_
    http.close()
    grpc_.close()


def test_v2_metadata_and_infer_through_ray(tc):
    http, grpc_ = tc
    assert grpc_.is_server_live() and grpc_.is_model_ready("csm-1b") and http.is_model_ready("csm-1b")
    assert grpc_.get_model_metadata("tts-1").outputs[0].name == "audio"
    [group] = grpc_.get_model_config("csm-1b").config.instance_group
    assert (group.kind, group.count) == (2, 1)  # KIND_CPU, one engine replica
    over_http = http.infer("csm-1b", [_text(httpclient)], parameters=PARAMS).as_numpy("audio")
    over_grpc = grpc_.infer("csm-1b", [_text(grpcclient)], parameters=PARAMS).as_numpy("audio")
    assert over_http.shape == (12 * 1920,) and np.array_equal(over_http, over_grpc)
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        grpc_.infer("nope", [_text(grpcclient)])
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        grpc_.infer("csm-1b", [_text(grpcclient)], parameters={"volume": 11})


def test_v2_stream_through_rays_grpc_proxy(tc):
    _, grpc_ = tc
    unary = grpc_.infer("csm-1b", [_text(grpcclient)], parameters=PARAMS).as_numpy("audio")
    responses: queue.Queue = queue.Queue()
    grpc_.start_stream(callback=lambda result, error: responses.put((time.monotonic(), result, error)))
    grpc_.async_stream_infer("csm-1b", [_text(grpcclient)], parameters=PARAMS)
    got = []
    while not got or not got[-1][1].get_response().parameters["triton_final_response"].bool_param:
        t, result, error = responses.get(timeout=120)
        assert error is None, error
        got.append((t, result))
    grpc_.stop_stream()
    chunks = [r.as_numpy("audio") for _, r in got]
    assert len(chunks) >= 3 and np.array_equal(np.concatenate(chunks), unary)
    assert got[0][0] < got[-1][0] - 0.05  # streamed as generated

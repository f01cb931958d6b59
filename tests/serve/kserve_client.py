"""Run as a script by test_v2.py: KServe's own Python SDK (`kserve`, its async REST client with
the v2 protocol and its async gRPC client) against a running csm-serve. A process of its own:
`kserve` and tritonclient's gRPC module cannot be imported in one process (both register the
`inference.*` protobuf messages; kserve/kserve#3099). Prints one JSON line, `RESULT {...}`."""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

PARAMS = {"voice": "nova", "seed": 5, "max_audio_seconds": 1}  # ints: kserve's gRPC client cannot send floats


def _request(model: str, binary: bool = False, **params) -> InferRequest:
    text = InferInput("text", [1], "BYTES")
    if binary:
        text.set_data_from_numpy(np.array([b"Hello there."], dtype=object), binary_data=True)
    else:
        text = InferInput("text", [1], "BYTES", data=["Hello there."])
    return InferRequest(model_name=model, request_id="kserve-1", infer_inputs=[text], parameters={**PARAMS, **params})


def _audio(response) -> str:
    return base64.b64encode(response.get_output_by_name("audio").as_numpy().astype("<f4").tobytes()).decode()


async def rest(url: str) -> dict:
    out: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, "csm-1b")
        out["unknown_model_ready"] = await client.is_model_ready(url, "nope")
        res = await client.infer(url, _request("csm-1b"), model_name="csm-1b")
        out["infer"] = {"id": res.id, "model_name": res.model_name, "audio": _audio(res)}
        res = await client.infer(url, _request("tts-1", binary=True), model_name="tts-1")
        out["infer_binary"] = {"id": res.id, "model_name": res.model_name, "audio": _audio(res)}
        try:
            await client.infer(url, _request("csm-1b", voice="nobody"), model_name="csm-1b")
        except httpx.HTTPStatusError as e:
            out["bad_voice"] = {"status": e.response.status_code, "message": str(e), "body": e.response.text}
    return out


async def grpc_(address: str) -> dict:
    out: dict = {}
    async with InferenceGRPCClient(address, timeout=60) as client:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready("csm-1b")
        res = await client.infer(_request("csm-1b"))
        out["infer"] = {"id": res.id, "model_name": res.model_name, "audio": _audio(res)}
        try:
            await client.infer(_request("nope"))
        except grpc.aio.AioRpcError as e:
            out["unknown_model"] = {"code": e.code().name, "details": e.details()}
    return out


async def main(url: str, address: str) -> None:
    print("RESULT " + json.dumps({"rest": await rest(url), "grpc": await grpc_(address)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

"""Tensors of the v2 HTTP infer call, in JSON or with the binary tensor data extension (a JSON
header of `Inference-Header-Content-Length` bytes, then the raw tensors; BYTES elements are
4-byte little-endian lengths + bytes, read and written with tritonclient's own helpers).
Every malformed request is a V2Error(400) that says what is wrong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from contract.errors import first_error

from .protocol import AUDIO, TEXT, VERSION, V2Error, check_output_names, check_text_input, text_from_raw

MAX_BODY_BYTES = 1 << 20  # 4,096 characters of UTF-8 are at most 16 KiB; room for JSON


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] = {}


class InferRequestBody(BaseModel):
    """The spec's fields, and `model_name` / `model_version`, which KServe's client puts in
    the body beside them (they must name the URL's model)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_name: str | None = None
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ParsedInfer(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str | None = None
    model_version: str | None = None
    id: str
    text: str
    parameters: dict[str, Any]
    binary_audio: bool

    def check_model(self, model: str, version: str | None) -> None:
        """`model_name` / `model_version` in the body, when given, must name the URL's model."""
        if self.model_name is not None and self.model_name != model:
            raise V2Error(400, f"model_name '{self.model_name}' in the request body does not match the model "
                               f"'{model}' in the URL")
        if self.model_version not in (None, "", version or VERSION):
            raise V2Error(400, f"model_version '{self.model_version}' in the request body does not match the "
                               f"version '{version or VERSION}' in the URL")


def parse_infer(body: bytes, header_length: str | None) -> ParsedInfer:
    if len(body) > MAX_BODY_BYTES:
        raise V2Error(400, f"request body is larger than {MAX_BODY_BYTES} bytes")
    header, binary = _split(body, header_length)
    try:
        request = InferRequestBody.model_validate_json(header)
    except ValidationError as e:
        first = first_error(e)
        raise V2Error(400, f"malformed infer request: {first.param or ''}: {first.message}") from None
    first = request.inputs[0] if request.inputs else None
    check_text_input([i.name for i in request.inputs], first.datatype if first else "", first.shape if first else [])
    text = _text(first, binary)
    parameters = dict(request.parameters)
    all_binary = parameters.pop("binary_data_output", False)  # Triton's: every output in binary
    if not isinstance(all_binary, bool):
        raise V2Error(400, "parameter binary_data_output must be true or false")
    return ParsedInfer(model_name=request.model_name, model_version=request.model_version, id=request.id or "",
                       text=text, parameters=parameters, binary_audio=_wants_binary(request.outputs, all_binary))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit():
        raise V2Error(400, f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    n = int(header_length)
    if n > len(body):
        raise V2Error(400, f"Inference-Header-Content-Length {n} is larger than the body ({len(body)} bytes)")
    return body[:n], body[n:]


def _text(tensor: RequestInput, binary: bytes) -> str:
    unknown = set(tensor.parameters) - {"binary_data_size"}
    if unknown:
        raise V2Error(400, f"unknown parameter '{sorted(unknown)[0]}' on input '{TEXT}'")
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise V2Error(400, "binary data after the header, but no input declares binary_data_size")
        data = tensor.data
        while isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, str):
            raise V2Error(400, f"input '{TEXT}': data must be one string, got {json.dumps(tensor.data)[:80]}")
        return data
    if tensor.data is not None:
        raise V2Error(400, f"input '{TEXT}' has both JSON data and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise V2Error(400, f"input '{TEXT}': binary_data_size {size!r} does not match the {len(binary)} "
                           "bytes after the header")
    return text_from_raw(binary)


def _wants_binary(outputs: list[RequestOutput] | None, all_binary: bool) -> bool:
    if outputs is None:
        return all_binary
    check_output_names([o.name for o in outputs])
    params = outputs[0].parameters
    unknown = set(params) - {"binary_data"}
    if unknown:
        raise V2Error(400, f"unsupported parameter '{sorted(unknown)[0]}' on output '{AUDIO}'")
    if not isinstance(params.get("binary_data", False), bool):
        raise V2Error(400, f"output '{AUDIO}': binary_data must be true or false")
    return params.get("binary_data", all_binary)


def infer_response(model: str, request_id: str, pcm: np.ndarray, binary: bool,
                   parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (the header length when binary)."""
    output: dict[str, Any] = {"name": AUDIO, "datatype": "FP32", "shape": [len(pcm)]}
    raw = pcm.astype("<f4").tobytes()
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = pcm.astype(np.float32).tolist()
    body = {"model_name": model, "model_version": VERSION, **({"id": request_id} if request_id else {}),
            "parameters": parameters, "outputs": [output]}  # the request's id echoed, if it had one
    header = json.dumps(body).encode()
    if not binary:
        return header, {}
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}

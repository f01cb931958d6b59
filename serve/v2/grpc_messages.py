"""Triton's gRPC messages and the conversions between them and the v2 records. The messages
are the generated modules tritonclient publishes (never hand-written). Those were generated
as top-level modules (`grpc_service_pb2`, `model_config_pb2`), so their classes pickle by
those names; Ray's gRPC proxy pickles each request to the ingress replica, so this module
registers the names in `sys.modules` in every process that imports it (the proxy imports it
through `add_servicer`, the replica through the ingress)."""

from __future__ import annotations

import sys

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .protocol import (
    AUDIO,
    FINAL,
    TEXT,
    VERSION,
    V2Error,
    check_output_names,
    check_text_input,
    text_from_raw,
    utf8_text,
)

sys.modules.setdefault("grpc_service_pb2", service_pb2)
sys.modules.setdefault("model_config_pb2", model_config_pb2)

pb = service_pb2
SERVICE_NAME = "inference.GRPCInferenceService"


def add_servicer(servicer, server) -> None:
    """`grpc_servicer_functions` entry for Ray Serve, and the in-process server's registration."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def parse(record: dict, message):
    """A v2 record (the HTTP JSON) as Triton's message."""
    return json_format.ParseDict(record, message)


def parameter_values(parameters) -> dict:
    """InferParameter map -> plain values (the oneof that is set)."""
    values = {}
    for name, p in parameters.items():
        which = p.WhichOneof("parameter_choice")
        if which is None:
            raise V2Error(400, f"parameter {name} has no value")
        values[name] = getattr(p, which)
    return values


def request_text(request: pb.ModelInferRequest) -> str:
    """The one BYTES element of input `text`, from raw_input_contents or contents."""
    first = request.inputs[0] if request.inputs else None
    check_text_input([i.name for i in request.inputs], first.datatype if first else "",
                     list(first.shape) if first else [])
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise V2Error(400, f"input '{TEXT}': expected one raw input, got {len(request.raw_input_contents)}")
        return text_from_raw(request.raw_input_contents[0])
    if len(first.contents.bytes_contents) != 1:
        raise V2Error(400, f"input '{TEXT}' has no data (or more than one element)")
    return utf8_text(first.contents.bytes_contents[0])


def check_outputs(request: pb.ModelInferRequest) -> None:
    check_output_names([o.name for o in request.outputs])


def infer_response(model: str, request_id: str, pcm: np.ndarray, final: bool | None = None,
                   sample_rate: int | None = None) -> pb.ModelInferResponse:
    """`audio` as FP32 raw output; `final` sets triton_final_response (streams only)."""
    response = pb.ModelInferResponse(model_name=model, model_version=VERSION, id=request_id)
    if sample_rate is not None:
        response.parameters["sample_rate"].int64_param = sample_rate
    if final is not None:
        response.parameters[FINAL].bool_param = final
    if pcm is not None:
        response.outputs.add(name=AUDIO, datatype="FP32", shape=[len(pcm)])
        response.raw_output_contents.append(pcm.astype("<f4").tobytes())
    return response

"""Triton's `inference.GRPCInferenceService` over the v2 service: `InferenceRPC` answers each
RPC from a request message and the call's metadata (so the in-process grpc.aio server and the
Ray Serve ingress share it); `GrpcServicer` is its grpc.aio face.

ModelStreamInfer is decoupled: one response per audio chunk, sent as the engine produces it,
the last marked `triton_final_response: true` (or, when the client asked for it with
`triton_enable_empty_final_response`, an extra empty final response). A failure is an
in-band `error_message` and the stream goes on serving, as Triton does. Requests on one
stream are served in order. A cancelled call closes its generation and frees its slot.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc
import numpy as np

from models.params import SAMPLE_RATE_HZ

from ..backend import INTERNAL_MESSAGE
from ..deps import is_authorized
from .grpc_messages import (
    add_servicer,
    check_outputs,
    infer_response,
    parameter_values,
    parse,
    pb,
    request_text,
    service_pb2_grpc,
)
from .protocol import TextInference, V2Error, text_inference
from .records import model_config, model_metadata, model_statistics, server_metadata
from .service import InferTiming, V2Service

log = logging.getLogger(__name__)


class InferenceRPC:
    def __init__(self, service: V2Service) -> None:
        self.service = service

    def authorize(self, metadata: Iterable[tuple[str, str]]) -> None:
        given = dict((k.lower(), v) for k, v in metadata).get("authorization", "")
        if not is_authorized(given, self.service.settings.api_keys):
            raise V2Error(401, "Incorrect or missing API key: send metadata authorization: Bearer <key>.")

    async def ServerLive(self, request) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.service.is_ready())

    async def ModelReady(self, request) -> pb.ModelReadyResponse:
        self.service.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=await self.service.is_ready())

    async def ServerMetadata(self, request) -> pb.ServerMetadataResponse:
        return parse(server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request) -> pb.ModelMetadataResponse:
        self.service.check_model(request.name, request.version)
        return parse(model_metadata(request.name), pb.ModelMetadataResponse())

    async def ModelConfig(self, request) -> pb.ModelConfigResponse:
        self.service.check_model(request.name, request.version)
        instances = await self.service.backend.instances()
        return parse({"config": model_config(request.name, instances)}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request) -> pb.ModelStatisticsResponse:
        stats = self.service.stats
        if request.name:
            self.service.check_model(request.name, request.version)
            stats = {request.name: stats[request.name]}
        return parse(model_statistics(stats), pb.ModelStatisticsResponse())

    def _inference(self, request: pb.ModelInferRequest) -> tuple[TextInference, InferTiming]:
        timing = InferTiming(time.monotonic_ns())
        self.service.check_model(request.model_name, request.model_version)
        check_outputs(request)
        text = request_text(request)
        inference = text_inference(request.model_name, request.id, f"grpc_{uuid.uuid4().hex}", text,
                                   parameter_values(request.parameters), "v2-grpc")
        timing.input_ns = time.monotonic_ns() - timing.start_ns
        return inference, timing

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        inference, timing = self._inference(request)
        chunks = [c async for c in self.service.infer(inference, timing)]
        t = time.monotonic_ns()
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        response = infer_response(inference.model, request.id, pcm, sample_rate=SAMPLE_RATE_HZ)
        timing.output_ns = time.monotonic_ns() - t
        self.service.record_success(inference.model, timing)
        return response

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest]
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            try:
                inference, timing = self._inference(request)
                async for response in self._responses(inference, timing, request.id):
                    yield response
                self.service.record_success(inference.model, timing)
            except V2Error as e:
                yield pb.ModelStreamInferResponse(error_message=e.message)
            except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
                log.exception("gRPC stream request %r failed", request.id)
                yield pb.ModelStreamInferResponse(error_message=INTERNAL_MESSAGE)

    async def _responses(self, inference: TextInference, timing: InferTiming, request_id: str
                         ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per chunk, held back by one so the last can carry the final flag."""
        model, previous = inference.model, None

        def response(pcm, final: bool) -> pb.ModelStreamInferResponse:
            t = time.monotonic_ns()
            rate = SAMPLE_RATE_HZ if pcm is not None else None
            message = _stream(infer_response(model, request_id, pcm, final, rate))
            timing.output_ns += time.monotonic_ns() - t
            return message

        async for chunk in self.service.infer(inference, timing):
            if previous is not None:
                yield response(previous, False)
            previous = chunk
        if previous is not None:
            yield response(previous, not inference.wants_empty_final)
        if inference.wants_empty_final or previous is None:
            yield response(None, True)


def _stream(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=response)


UNARY = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
         "ModelStatistics", "ModelInfer")


class GrpcServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """grpc.aio servicer: every RPC authorizes from the call's metadata, then InferenceRPC
    answers; a V2Error aborts the call with its status code. The RPCs this server does not
    offer (model repository, shared memory, trace, log settings) answer UNIMPLEMENTED."""

    def __init__(self, rpc: InferenceRPC) -> None:
        self.rpc = rpc
        for name in UNARY:
            setattr(self, name, self._unary(getattr(rpc, name)))

    def _unary(self, method):
        async def call(request, context: grpc.aio.ServicerContext):
            try:
                self.rpc.authorize(context.invocation_metadata() or ())
                return await method(request)
            except V2Error as e:
                await context.abort(e.grpc_code, e.message)
            except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
                log.exception("gRPC %s failed", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        return call

    async def ModelStreamInfer(self, requests, context: grpc.aio.ServicerContext):
        try:
            self.rpc.authorize(context.invocation_metadata() or ())
        except V2Error as e:
            await context.abort(e.grpc_code, e.message)
        async for response in self.rpc.ModelStreamInfer(requests):
            yield response


async def start_grpc_server(service: V2Service, address: str) -> grpc.aio.Server:
    """The in-process gRPC server (what Ray Serve's gRPC proxy is under `make serve`)."""
    server = grpc.aio.server()
    add_servicer(GrpcServicer(InferenceRPC(service)), server)
    server.add_insecure_port(address)
    await server.start()
    return server

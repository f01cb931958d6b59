"""Triton's `inference.GRPCInferenceService` over the v2 service. `InferenceRPC` is the one
adapter: it answers each RPC from a request message and the call's metadata, with
authorization and the mapping of failures to gRPC statuses written once (`unary`,
`authorize`, `stream`). It has two faces that only deliver its answers: `GrpcServicer` here
(grpc.aio, in-process) and the Ray Serve ingress's RPC methods (deployments/app.py).

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
from dataclasses import dataclass

import grpc
import numpy as np

from contract.errors import INTERNAL_MESSAGE

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
from .service import V2Service

log = logging.getLogger(__name__)
UNARY = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
         "ModelStatistics", "ModelInfer")


@dataclass(frozen=True)
class RpcStatus:
    """How a call failed: its gRPC status code and the details the client gets."""

    code: grpc.StatusCode
    details: str


class InferenceRPC:
    def __init__(self, service: V2Service) -> None:
        self.service = service

    # ---- what both faces call ------------------------------------------------------------------
    def authorize(self, metadata: Iterable[tuple[str, str]]) -> RpcStatus | None:
        """None when the call's metadata carries an accepted key (or none is needed)."""
        given = dict((k.lower(), v) for k, v in metadata).get("authorization", "")
        if is_authorized(given, self.service.settings.api_keys):
            return None
        return RpcStatus(grpc.StatusCode.UNAUTHENTICATED,
                         "Incorrect or missing API key: send metadata authorization: Bearer <key>.")

    async def unary(self, name: str, request, metadata: Iterable[tuple[str, str]]):
        """The response to unary RPC `name`, or the RpcStatus it fails with (never a traceback:
        an unexpected error is logged and answered INTERNAL with a generic message)."""
        if (denied := self.authorize(metadata)) is not None:
            return denied
        try:
            return await getattr(self, name)(request)
        except V2Error as e:
            return RpcStatus(e.grpc_code, e.message)
        except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
            log.exception("gRPC %s failed", name)
            return RpcStatus(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    async def stream(self, requests: AsyncIterator[pb.ModelInferRequest]
                     ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """ModelStreamInfer after `authorize`: each request's responses in order; a failure is
        an in-band error_message and the stream goes on serving, as Triton does."""
        async for request in requests:
            try:
                inference = self._inference(request)
                async for response in self._responses(inference, request.id):
                    yield response
            except V2Error as e:
                yield pb.ModelStreamInferResponse(error_message=e.message)
            except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
                log.exception("gRPC stream request %r failed", request.id)
                yield pb.ModelStreamInferResponse(error_message=INTERNAL_MESSAGE)

    # ---- the RPCs --------------------------------------------------------------------------

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
        instances = await self.service.instances()
        return parse({"config": model_config(request.name, instances)}, pb.ModelConfigResponse())

    async def ModelStatistics(self, request) -> pb.ModelStatisticsResponse:
        stats = self.service.stats
        if request.name:
            self.service.check_model(request.name, request.version)
            stats = {request.name: stats[request.name]}
        return parse(model_statistics(stats), pb.ModelStatisticsResponse())

    def _inference(self, request: pb.ModelInferRequest) -> TextInference:
        arrived_ns = time.monotonic_ns()
        self.service.check_model(request.model_name, request.model_version)
        check_outputs(request)
        text = request_text(request)
        return text_inference(request.model_name, request.id, f"grpc_{uuid.uuid4().hex}", text,
                              parameter_values(request.parameters), "v2-grpc", arrived_ns)

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        inference = self._inference(request)
        stream = await self.service.start(inference)
        chunks = [c async for c in self.service.audio(inference, stream)]
        t = time.monotonic_ns()
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        response = infer_response(inference.model, request.id, pcm, sample_rate=inference.rate)
        self.service.record_success(inference, stream.timing, time.monotonic_ns() - t)
        return response

    async def _responses(self, inference: TextInference, request_id: str
                         ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per chunk: the first at once (first audio is not held up), later ones
        held back by one so the last can carry the final flag (on an empty response when the
        first chunk was the only one, or when the client asks for one)."""
        model, previous, output_ns = inference.model, None, 0

        def response(pcm, final: bool) -> pb.ModelStreamInferResponse:
            nonlocal output_ns
            t = time.monotonic_ns()
            rate = inference.rate if pcm is not None else None
            message = _stream(infer_response(model, request_id, pcm, final, rate))
            output_ns += time.monotonic_ns() - t
            return message

        stream = await self.service.start(inference)
        first = True
        async for chunk in self.service.audio(inference, stream):
            if first:
                yield response(chunk, False)
                stream.sent(len(chunk))
                first = False
                continue
            if previous is not None:
                yield response(previous, False)
                stream.sent(len(previous))
            previous = chunk
        if previous is not None:
            yield response(previous, not inference.wants_empty_final)
            stream.sent(len(previous))
        if inference.wants_empty_final or previous is None:
            yield response(None, True)
        self.service.record_success(inference, stream.timing, output_ns)


def _stream(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=response)


class GrpcServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """InferenceRPC's grpc.aio face: a failure aborts the call with its status. The RPCs this
    server does not offer (model repository, shared memory, trace, log settings) answer
    UNIMPLEMENTED."""

    def __init__(self, rpc: InferenceRPC) -> None:
        self.rpc = rpc
        for name in UNARY:
            setattr(self, name, self._unary(name))

    def _unary(self, name: str):
        async def call(request, context: grpc.aio.ServicerContext):
            reply = await self.rpc.unary(name, request, context.invocation_metadata() or ())
            if isinstance(reply, RpcStatus):
                await context.abort(reply.code, reply.details)
            return reply
        return call

    async def ModelStreamInfer(self, requests, context: grpc.aio.ServicerContext):
        if (denied := self.rpc.authorize(context.invocation_metadata() or ())) is not None:
            await context.abort(denied.code, denied.details)
        async for response in self.rpc.stream(requests):
            yield response


async def start_grpc_server(service: V2Service, address: str) -> grpc.aio.Server:
    """The in-process gRPC server (what Ray Serve's gRPC proxy is under `make serve`)."""
    server = grpc.aio.server()
    add_servicer(GrpcServicer(InferenceRPC(service)), server)
    server.add_insecure_port(address)
    await server.start()
    return server

"""The Open Inference Protocol over HTTP, on the API port: server and model metadata, model
readiness, Triton's model configuration and statistics, and infer (JSON or binary tensors).
Errors are the protocol's `{"error": "..."}`; API keys apply as on the OpenAI routes."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from observability import metrics as m

from ..deps import get_request_id, require_api_key
from ..errors import APIError, retry_after_headers
from .protocol import TextInference, V2Error, text_inference
from .records import model_config, model_metadata, model_statistics, server_metadata
from .service import V2Service
from .tensors import infer_response, parse_infer

DISCONNECT_POLL_S = 0.25


async def _authorized(request: Request) -> None:
    try:
        await require_api_key(request, request.app.state.settings)
    except APIError as e:
        raise V2Error(401, e.message) from None


def _service(request: Request) -> V2Service:
    return request.app.state.v2


class V2ErrorBody(BaseModel):
    """The protocol's error: one message."""

    error: str


_ERRORS = {"4XX": {"model": V2ErrorBody, "description": "bad input, API key, unknown model or version, not ready"},
           "5XX": {"model": V2ErrorBody, "description": "at capacity or restarting (503, Retry-After), internal"}}
router = APIRouter(tags=["v2 (Open Inference Protocol)"], dependencies=[Depends(_authorized)], responses=_ERRORS)


@router.get("/v2")
async def server_info() -> dict:
    return server_metadata()


@router.get("/v2/models/stats")
async def all_statistics(request: Request) -> dict:
    return model_statistics(_service(request).stats)


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def metadata(model: str, request: Request, version: str | None = None) -> dict:
    _service(request).check_model(model, version)
    return model_metadata(model)


@router.get("/v2/models/{model}/ready")
@router.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(model: str, request: Request, version: str | None = None) -> JSONResponse:
    """`{"name", "ready": true}` with 200; not ready: Triton's 400, with the protocol's error."""
    service = _service(request)
    service.check_model(model, version)
    if await service.is_ready():
        return JSONResponse({"name": model, "ready": True})
    return JSONResponse({"name": model, "ready": False, "error": f"model '{model}' is not ready"}, status_code=400)


@router.get("/v2/models/{model}/config")
@router.get("/v2/models/{model}/versions/{version}/config")
async def config(model: str, request: Request, version: str | None = None) -> dict:
    service = _service(request)
    service.check_model(model, version)
    return model_config(model, await service.instances())


@router.get("/v2/models/{model}/stats")
@router.get("/v2/models/{model}/versions/{version}/stats")
async def statistics(model: str, request: Request, version: str | None = None) -> dict:
    service = _service(request)
    service.check_model(model, version)
    return model_statistics({model: service.stats[model]})


@router.post("/v2/models/{model}/infer")
@router.post("/v2/models/{model}/versions/{version}/infer")
async def infer(model: str, request: Request, version: str | None = None) -> Response:
    arrived_ns = time.monotonic_ns()
    service = _service(request)
    service.check_model(model, version)
    parsed = parse_infer(await request.body(), request.headers.get("inference-header-content-length"))
    parsed.check_model(model, version)
    request_id = await get_request_id(request)
    inference = text_inference(model, parsed.id, request_id, parsed.text, parsed.parameters, "v2-http", arrived_ns)
    collect = asyncio.ensure_future(_collect(service, inference))
    try:  # a client that goes away (or a cancelled handler, as Serve's proxy does) aborts the generation
        while not collect.done():
            await asyncio.wait([collect], timeout=DISCONNECT_POLL_S)
            if not collect.done() and await request.is_disconnected():
                return Response(status_code=499)
    finally:
        if not collect.done():
            collect.cancel()
    pcm, timing = collect.result()
    t1 = time.monotonic_ns()
    body, headers = infer_response(model, parsed.id, pcm, parsed.binary_audio,
                                   {"sample_rate": inference.rate, "audio_seconds": len(pcm) / inference.rate})
    service.record_success(inference, timing, time.monotonic_ns() - t1)
    media = "application/octet-stream" if parsed.binary_audio else "application/json"
    return Response(body, media_type=media, headers=headers)


async def _collect(service: V2Service, inference: TextInference):
    stream = await service.start(inference)
    chunks = [c async for c in service.audio(inference, stream)]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), stream.timing


async def _v2_error(request: Request, exc: V2Error) -> JSONResponse:
    request.app.state.metrics.inc(m.ERRORS, labels={"code": str(exc.status)})
    headers = retry_after_headers(exc.retry_after_s) if exc.retry_after_s else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def install(app: FastAPI) -> None:
    app.state.v2 = V2Service(app.state.speech)
    app.add_exception_handler(V2Error, _v2_error)
    app.include_router(router)

"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the right status.
Bad input never becomes a 500, and no response carries a stack trace."""

from __future__ import annotations

import logging
import math
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import INTERNAL_MESSAGE, ErrorInfo, ErrorKind, first_error
from observability.metrics import ERRORS

from .schemas import ErrorResponse

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 409: "conflict_error",
    405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
}


# Documented on every API route, in place of FastAPI's default 422 (validation errors are 400 here).
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {"model": ErrorResponse, "description": "Client error: bad input, auth, unknown id, too large, rate limit"},
    "5XX": {"model": ErrorResponse, "description": "Server error or not ready (503, with Retry-After)"},
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


# The OpenAI API's status for each kind of failure (the v2 protocol has its own table:
# serve/v2/protocol.py). Overload is 429 here, as OpenAI's rate limits are.
STATUS: dict[ErrorKind, int] = {"invalid_request": 400, "not_found": 404, "conflict": 409, "overloaded": 429,
                                "unavailable": 503, "internal": 500}


def retry_after(info: ErrorInfo, default_s: int) -> float:
    """Seconds a client should wait before retrying: when the replica expects capacity back
    (from its running streams' remaining audio), else `default_s`."""
    return info.retry_after_s if info.retry_after_s is not None else float(default_s)


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` (whole seconds, at least 1, as HTTP defines it) and `retry-after-ms`
    (what OpenAI's SDKs read first, to the millisecond)."""
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, round(seconds * 1000)))}


def api_error(info: ErrorInfo, request_id: str, retry_after_s: int) -> APIError:
    """The HTTP response for a failure's ErrorInfo: its status, the client message (internal
    errors name the request id, so an operator can find the logged traceback), and
    Retry-After where retrying helps (`retry_after_s`: the default when the failure has no
    estimate of its own)."""
    status = STATUS[info.kind]
    message = f"{info.message} (request id {request_id})" if info.kind == "internal" else info.message
    headers = retry_after_headers(retry_after(info, retry_after_s)) if status in (429, 503) else None
    return APIError(status, message, info.param, info.code, headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def _json(request: Request, status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.inc(ERRORS, labels={"code": str(status)})
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _json(request, exc.status, exc.message, exc.param, exc.code, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = first_error(exc, skip=("body", "query", "path", "header", "form"))
    if first.type == "json_invalid":
        return _json(request, 400, "We could not parse the JSON body of your request.", None, "invalid_json")
    param, message = first.param, first.message
    if first.type == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif param:
        message = f"{param}: {message}"
    return _json(request, 400, message, param, first.type or None)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _json(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    log.error("request %s: unhandled error on %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return _json(request, 500, f"{INTERNAL_MESSAGE} (request id {request_id})", code="internal_error")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Pure ASGI (streams pass through untouched): every request has an id, kept in
    `request.state.request_id` for logs and 500 messages. A well-formed `x-request-id` from
    upstream is used as is (Ray Serve's proxy always sends one, and returns it to the client
    itself); otherwise one is made and sent back as `x-request-id`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        if given == request_id:
            return await self.app(scope, receive, send)

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)

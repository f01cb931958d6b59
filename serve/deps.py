"""Typed FastAPI dependencies: the backend, the speech service, the voice and conversation services, the settings,
metrics, the request id, API-key auth. All `async def`: FastAPI runs a plain `def` dependency on a worker
thread, a thread hop per dependency per request (measurable in a burst of refusals)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from contract.backend import SpeechBackend
from observability.metrics import MetricsSink

from .conversations import ConversationService
from .errors import APIError
from .settings import ServerSettings
from .speech import SpeechService
from .voices import VoiceService


async def get_backend(request: Request) -> SpeechBackend:
    return request.app.state.backend


async def get_speech(request: Request) -> SpeechService:
    return request.app.state.speech


async def get_voices(request: Request) -> VoiceService:
    return request.app.state.voices


async def get_conversations(request: Request) -> ConversationService:
    return request.app.state.conversations


async def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


async def get_metrics(request: Request) -> MetricsSink:
    return request.app.state.metrics


async def get_request_id(request: Request) -> str:
    return request.state.request_id


BackendDep = Annotated[SpeechBackend, Depends(get_backend)]
MetricsDep = Annotated[MetricsSink, Depends(get_metrics)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
SpeechDep = Annotated[SpeechService, Depends(get_speech)]
VoicesDep = Annotated[VoiceService, Depends(get_voices)]
ConversationsDep = Annotated[ConversationService, Depends(get_conversations)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]


def is_authorized(authorization: str, api_keys: list[str]) -> bool:
    """`Authorization: Bearer <key>` (an HTTP header or gRPC metadata) names one of the keys,
    compared in constant time; with no keys configured everything is authorized."""
    if not api_keys:
        return True
    scheme, _, token = authorization.partition(" ")
    given = token.strip().encode()
    return scheme.lower() == "bearer" and any(hmac.compare_digest(given, k.encode()) for k in api_keys)


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """When API keys are configured, every /v1 route needs `Authorization: Bearer <key>`
    (compared in constant time)."""
    if not is_authorized(request.headers.get("authorization", ""), settings.api_keys):
        raise APIError(401, "Incorrect or missing API key: send Authorization: Bearer <key>.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})

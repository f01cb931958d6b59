"""The Wyoming edge's settings and its client of csm-serve's OpenAI-compatible HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.params import SAMPLE_RATE_HZ, MaxAudioSeconds
from serve.audio import SampleRate
from serve.schemas import ErrorResponse, ModelList, SpeechRequest, VoiceList, VoiceObject


class WyomingSettings(BaseSettings):
    """From the command line or the environment (CSM_WYOMING_*)."""

    model_config = SettingsConfigDict(env_prefix="CSM_WYOMING_", extra="forbid", protected_namespaces=())

    uri: str = Field("tcp://0.0.0.0:10200", description="where to listen (tcp://host:port, unix://path); 10200 is Wyoming's TTS port")
    api_url: str = Field("http://127.0.0.1:8000", description="the csm-serve HTTP API (a replica or the cluster's Service)")
    api_key: str | None = Field(None, description="Bearer key, when the API has keys")
    voice: str = Field("alloy", description="the voice when a request names none")
    model: str | None = Field(None, description="model id to request; default: the first of GET /v1/models")
    max_audio_seconds: MaxAudioSeconds | None = Field(None, description="cap on each request's audio")
    sample_rate: SampleRate = Field(SAMPLE_RATE_HZ, description="samples per second of the audio sent (16000 for satellites that want it)")
    timeout_s: float = Field(30.0, gt=0, description="connect timeout, and the longest wait for the next audio bytes")


class SpeechAPIError(Exception):
    """A request the API refused or could not serve; `message` is the API's own."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class SpeechAPI:
    """Voices, and speech streamed as raw PCM (24 kHz, 16-bit little-endian, mono)."""

    def __init__(self, settings: WyomingSettings) -> None:
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.settings = settings
        self.http = httpx.AsyncClient(base_url=settings.api_url, headers=headers, timeout=settings.timeout_s)
        self._model = settings.model

    async def aclose(self) -> None:
        await self.http.aclose()

    async def voices(self) -> list[VoiceObject]:
        return VoiceList.model_validate_json(await self._get("/v1/audio/voices")).data

    async def model(self) -> str:
        if self._model is None:
            self._model = ModelList.model_validate_json(await self._get("/v1/models")).data[0].id
        return self._model

    async def speak(self, text: str, voice: str) -> AsyncIterator[bytes]:
        """PCM bytes as the API sends them, always whole samples. Closing the iterator early
        closes the HTTP response, which aborts the generation on the server."""
        try:
            body = SpeechRequest(model=await self.model(), input=text, voice=voice, response_format="pcm",
                                 max_audio_seconds=self.settings.max_audio_seconds, sample_rate=self.settings.sample_rate)
        except ValidationError as e:
            raise SpeechAPIError(f"cannot speak this: {e.errors()[0]['msg']}", "invalid_request") from None
        odd = b""
        try:
            async with self.http.stream("POST", "/v1/audio/speech", json=body.model_dump(exclude_none=True)) as response:
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                async for data in response.aiter_bytes():
                    data, odd = _whole_samples(odd + data)
                    if data:
                        yield data
        except httpx.TransportError as e:  # unreachable, or the stream was cut
            raise SpeechAPIError(f"the speech API failed: {type(e).__name__}: {e}", "unavailable") from None

    async def _get(self, path: str) -> bytes:
        try:
            response = await self.http.get(path)
        except httpx.TransportError as e:
            raise SpeechAPIError(f"the speech API is unreachable: {type(e).__name__}: {e}", "unavailable") from None
        if response.status_code != 200:
            raise _refusal(response.status_code, response.content)
        return response.content


def _whole_samples(data: bytes) -> tuple[bytes, bytes]:
    cut = len(data) - len(data) % 2
    return data[:cut], data[cut:]


def _refusal(status: int, body: bytes) -> SpeechAPIError:
    try:
        error = ErrorResponse.model_validate_json(body).error
        return SpeechAPIError(error.message, error.code or error.type)
    except ValidationError:
        return SpeechAPIError(f"the speech API answered HTTP {status}", f"http_{status}")

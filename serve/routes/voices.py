"""Custom voices as in OpenAI's voices API, plus `transcript` (CSM needs the sample's words)."""

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from models.params import Speaker
from contract.errors import ReplicaError
from stores.voices import VoiceError, VoiceNotFound

from ..audio import AudioDecodeError, decode_audio
from ..deps import BackendDep, RequestIdDep, SettingsDep, StoreDep
from ..errors import APIError, api_error
from ..schemas import VoiceList, VoiceObject

log = logging.getLogger(__name__)
router = APIRouter(tags=["voices"])


def _object(voice) -> VoiceObject:
    return VoiceObject(id=voice.id, name=voice.name, created_at=voice.created_at)


@router.post("/v1/audio/voices", response_model=VoiceObject)
async def create_voice(
    backend: BackendDep,
    store: StoreDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    name: str = Form(...),
    audio_sample: UploadFile = File(...),
    transcript: str = Form(...),
    consent: str | None = Form(None),
    speaker: Annotated[Speaker, Form()] = 0,
) -> VoiceObject:
    max_bytes = settings.max_sample_bytes
    data = await audio_sample.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise APIError(413, f"audio_sample is larger than {max_bytes} bytes.", "audio_sample", "file_too_large")
    try:
        store.check_new(name, transcript)
        pcm = await asyncio.to_thread(decode_audio, data, store.max_sample_s + 1)
        voice = await asyncio.to_thread(store.create, name, pcm, transcript, speaker)
    except AudioDecodeError as e:
        raise APIError(400, f"audio_sample: {e}", "audio_sample", "invalid_audio") from e
    except VoiceError as e:
        raise APIError(400, str(e), e.param, "invalid_voice") from e
    try:
        await backend.add_voice(voice)
    except ReplicaError as e:  # e.g. the sample and its transcript are longer than the model's context
        await asyncio.to_thread(store.delete, voice.id)
        if e.info.kind == "invalid_request":
            raise APIError(400, f"transcript: the sample and its transcript do not fit the model: {e.info.message}",
                           "transcript", "invalid_voice") from None
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return _object(voice)


@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voices(store: StoreDep) -> VoiceList:
    return VoiceList(data=[_object(v) for v in await asyncio.to_thread(store.list)])


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, backend: BackendDep, store: StoreDep) -> dict:
    try:
        voice = await asyncio.to_thread(store.delete, voice_id)
    except VoiceNotFound as e:
        raise APIError(404, str(e), "voice_id", "voice_not_found") from e
    try:
        await backend.forget_voice(voice.id)
    except ReplicaError as e:  # the files are gone; the replicas follow the store and forget it anyway
        log.warning("voice %s deleted, but an engine did not forget it: %s", voice.id, e.info.message)
    return {"id": voice.id, "object": "audio.voice.deleted", "deleted": True}

"""Custom voices as in OpenAI's voices API, plus `transcript` (CSM needs the sample's words)."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from contract.errors import ReplicaError
from models.params import Speaker

from ..audio import AudioDecodeError, decode_audio
from ..deps import RequestIdDep, SettingsDep, VoicesDep
from ..errors import APIError, api_error
from ..schemas import VoiceList, VoiceObject

router = APIRouter(tags=["voices"])


def _object(voice) -> VoiceObject:
    return VoiceObject(id=voice.id, name=voice.name, created_at=voice.created_at)


@router.post("/v1/audio/voices", response_model=VoiceObject)
async def create_voice(
    voices: VoicesDep,
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
        voices.check_new(name, transcript)
        pcm = await asyncio.to_thread(decode_audio, data, voices.store.max_sample_s + 1)
        voice = await voices.create(name, pcm, transcript, speaker)
    except AudioDecodeError as e:
        raise APIError(400, f"audio_sample: {e}", "audio_sample", "invalid_audio") from e
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return _object(voice)


@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voices(voices: VoicesDep) -> VoiceList:
    return VoiceList(data=[_object(v) for v in await voices.list()])


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, voices: VoicesDep, settings: SettingsDep, request_id: RequestIdDep) -> dict:
    try:
        voice = await voices.delete(voice_id, "voice_id")
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return {"id": voice.id, "object": "audio.voice.deleted", "deleted": True}

"""Conversations: CSM's context kept on the server (their owner: serve/conversations.py). A speech
request with `conversation` speaks its next turn (serve/speech.py); these routes create one,
show it, delete it, and add a turn someone else spoke (its recording and its words)."""

import asyncio
import math
from typing import Annotated

from fastapi import APIRouter, Body, File, Form, UploadFile

from contract.errors import ReplicaError
from models.params import FRAME_RATE_HZ, SAMPLE_RATE_HZ, Speaker
from stores.conversations import Conversation

from ..audio import AudioDecodeError, decode_audio
from ..deps import BackendDep, ConversationsDep, RequestIdDep, SettingsDep, VoicesDep
from ..errors import APIError, api_error
from ..schemas import ConversationCreate, ConversationObject, ConversationTurnObject

router = APIRouter(tags=["conversations"])
PATH_ID = "conversation_id"  # the path's name for the conversation a route acts on
MIN_REPLY_FRAMES = 125  # 10 s: what a turn must leave of the context for the model's reply


def _object(conversation: Conversation, idle_s: float) -> ConversationObject:
    turns = [ConversationTurnObject(speaker=t.speaker, text=t.text, source="audio" if t.audio else "generated")
             for t in conversation.turns]
    return ConversationObject(id=conversation.id, created_at=conversation.created_at, voice=conversation.voice,
                              expires_at=int(conversation.updated_at + idle_s), turns=turns, bytes=conversation.num_bytes)


@router.post("/v1/audio/conversations", response_model=ConversationObject)
async def create_conversation(
    conversations: ConversationsDep, voices: VoicesDep, settings: SettingsDep, request_id: RequestIdDep,
    body: Annotated[ConversationCreate | None, Body()] = None,
) -> ConversationObject:
    voice = None
    try:
        if body is not None and body.voice is not None:
            key = body.voice.id if not isinstance(body.voice, str) else body.voice
            try:
                voice = (await voices.resolve(key)).id
            except ReplicaError:  # the id is not echoed: a generated one could look like a secret
                raise APIError(400, "voice: no such voice; use an OpenAI voice name or a custom voice id", "voice",
                               "voice_not_found") from None
        conversation = await conversations.create(voice)
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return _object(conversation, settings.conversation_idle_s)


@router.get("/v1/audio/conversations/{conversation_id}", response_model=ConversationObject)
async def get_conversation(conversation_id: str, conversations: ConversationsDep, settings: SettingsDep,
                           request_id: RequestIdDep) -> ConversationObject:
    try:
        return _object(await conversations.get(conversation_id, PATH_ID), settings.conversation_idle_s)
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None


@router.delete("/v1/audio/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, conversations: ConversationsDep, settings: SettingsDep,
                              request_id: RequestIdDep) -> dict:
    try:
        conversation = await conversations.delete(conversation_id, PATH_ID)
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return {"id": conversation.id, "object": "audio.conversation.deleted", "deleted": True}


@router.post("/v1/audio/conversations/{conversation_id}/turns", response_model=ConversationObject)
async def add_turn(
    conversation_id: str,
    conversations: ConversationsDep,
    backend: BackendDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    audio: UploadFile = File(..., description="the turn's recording, in any format a voice sample may be"),
    transcript: str = Form(..., description="the words spoken in it"),
    speaker: Annotated[Speaker, Form()] = 1,
) -> ConversationObject:
    """A turn someone else spoke (the user, another voice): kept after the conversation's
    turns, so the next turn the model speaks follows it."""
    try:
        await conversations.get(conversation_id, PATH_ID)  # a 404 before reading any upload
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    max_bytes = settings.max_turn_audio_bytes
    data = await audio.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise APIError(413, f"audio is larger than {max_bytes} bytes.", "audio", "file_too_large")
    try:
        max_positions = (await backend.instances()).max_positions
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    # what the turn alone takes (a frame per 80 ms, at most a token per byte of its words), and the reply's room
    max_seconds = (max_positions - MIN_REPLY_FRAMES - len(transcript.encode()) - 3) / FRAME_RATE_HZ
    try:
        pcm = await asyncio.to_thread(decode_audio, data, max(0.0, max_seconds) + 1)
    except AudioDecodeError as e:
        raise APIError(400, f"audio: {e}", "audio", "invalid_audio") from e
    if math.ceil(len(pcm) / SAMPLE_RATE_HZ * FRAME_RATE_HZ) > max_seconds * FRAME_RATE_HZ:
        raise APIError(400, f"audio: a turn with these words may be at most {max(0.0, max_seconds):.1f} s long, to fit "
                       f"the model's context of {max_positions} positions with room for a reply", "audio",
                       "turn_too_long")
    try:
        conversation = await conversations.add_audio_turn(conversation_id, speaker, transcript, pcm, PATH_ID)
    except ReplicaError as e:
        raise api_error(e.info, request_id, settings.retry_after_s) from None
    return _object(conversation, settings.conversation_idle_s)

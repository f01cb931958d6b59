"""POST /v1/audio/speech/batch (serve/batch.py): bounds checked here, then every item run."""

from __future__ import annotations

from fastapi import APIRouter

from ..batch import BatchSpeechRequest, BatchSpeechResponse, run_batch
from ..deps import RequestIdDep, SettingsDep, SpeechDep
from ..errors import APIError

router = APIRouter(tags=["speech"])


@router.post("/v1/audio/speech/batch", response_model=BatchSpeechResponse)
async def create_speech_batch(body: BatchSpeechRequest, speech: SpeechDep, settings: SettingsDep,
                              request_id: RequestIdDep) -> BatchSpeechResponse:
    chars = body.num_chars()
    if chars > settings.batch_max_chars:
        raise APIError(400, f"the batch's items hold {chars} characters; at most {settings.batch_max_chars} "
                       "are taken at once (split it)", "items", "batch_too_large")
    if body.model is not None and body.model not in speech.models:
        raise APIError(404, f"The model '{body.model}' does not exist.", "model", "model_not_found")
    return await run_batch(body, speech, settings, request_id)

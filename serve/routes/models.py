"""GET /v1/models in OpenAI's list shape."""

import time

from fastapi import APIRouter

from ..deps import SettingsDep
from ..errors import APIError
from ..schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])
_STARTED = int(time.time())


def _cards(settings) -> list[ModelCard]:
    return [ModelCard(id=m, created=_STARTED, owned_by="csm-serve") for m in [settings.model_id, *settings.model_aliases]]


@router.get("/v1/models", response_model=ModelList)
async def list_models(settings: SettingsDep) -> ModelList:
    return ModelList(data=_cards(settings))


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, settings: SettingsDep) -> ModelCard:
    for card in _cards(settings):
        if card.id == model_id:
            return card
    raise APIError(404, f"The model '{model_id}' does not exist.", "model", "model_not_found")

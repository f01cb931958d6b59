"""The FastAPI app factory: `create_app` only builds the app; one router per resource."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from .backend import SpeechBackend
from .deps import require_api_key
from .errors import install_error_handlers
from .routes import health, models, speech, voices
from .settings import ServerSettings
from .voices import VoiceStore


def create_app(backend: SpeechBackend, store: VoiceStore, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="csm-serve", version="0.1.0", description="OpenAI-compatible speech API for Sesame CSM")
    app.state.backend, app.state.store, app.state.settings = backend, store, settings
    install_error_handlers(app)
    app.include_router(health.router)
    auth = [Depends(require_api_key)]
    for router in (models.router, speech.router, voices.router):
        app.include_router(router, dependencies=auth)
    return app

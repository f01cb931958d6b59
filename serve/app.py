"""The FastAPI app factory: `create_app` only builds the app; one router per resource."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from contract.backend import SpeechBackend
from observability.metrics import Metrics, MetricsSink
from stores.voices import VoiceStore

from .conversations import ConversationService
from .deps import require_api_key
from .errors import ERROR_RESPONSES, install_error_handlers
from .routes import batch, conversations, health, models, playground, speech, speech_stream, voices
from .settings import ServerSettings
from .speech import SpeechService
from .v2 import routes as v2_routes
from .voices import VoiceService


def create_app(
    backend: SpeechBackend, store: VoiceStore, settings: ServerSettings, metrics: MetricsSink | None = None
) -> FastAPI:
    """`metrics`: an observability.metrics.Metrics (then served at /metrics) or the Ray binding
    of the same definitions (exported by Ray's metrics agent); default: a private registry."""
    app = FastAPI(title="csm-serve", version="0.1.0", description="OpenAI-compatible speech API for Sesame CSM")
    metrics = metrics if metrics is not None else Metrics()
    app.state.backend, app.state.settings, app.state.metrics = backend, settings, metrics
    app.state.voices = VoiceService(store, backend)  # each resource's one owner at the edge
    app.state.conversations = ConversationService(settings.conversation_store(), backend, metrics)
    app.state.speech = SpeechService(backend, app.state.voices, app.state.conversations, settings, metrics)
    if isinstance(metrics, Metrics):
        app.add_api_route("/metrics", metrics_endpoint(metrics.registry), include_in_schema=False)
    install_error_handlers(app)
    v2_routes.install(app)
    app.include_router(health.router)
    playground.install(app)
    app.include_router(speech_stream.router)  # API keys checked in the route (a WebSocket has no 401)
    auth = [Depends(require_api_key)]
    for router in (models.router, speech.router, batch.router, voices.router, conversations.router):
        app.include_router(router, dependencies=auth, responses=ERROR_RESPONSES)
    return app


def metrics_endpoint(registry: CollectorRegistry):
    """A route handler serving the registry in Prometheus' text format."""

    async def endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return endpoint

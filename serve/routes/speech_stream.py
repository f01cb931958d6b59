"""WS /v1/audio/speech/stream: text in as an LLM writes it, audio out as it is spoken
(serve/speech_socket). API keys as on HTTP: `Authorization: Bearer <key>`, or, for browsers
(which cannot set headers), the subprotocols `csm-serve` and `bearer.<key>` (the server
answers `csm-serve`)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, WebSocket

from ..deps import is_authorized
from ..schemas import ErrorBody
from ..speech_socket.events import ErrorEvent
from ..speech_socket.session import SpeechSocket

router = APIRouter(tags=["speech"])
SUBPROTOCOL, KEY_PREFIX = "csm-serve", "bearer."


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(ws: WebSocket) -> None:
    settings, speech = ws.app.state.settings, ws.app.state.speech
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    key = next((p.removeprefix(KEY_PREFIX) for p in offered if p.startswith(KEY_PREFIX)), None)
    authorization = ws.headers.get("authorization") or (f"Bearer {key}" if key is not None else "")
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    await ws.accept(subprotocol=subprotocol)
    if not is_authorized(authorization, settings.api_keys):
        denied = ErrorEvent(error=ErrorBody(
            message="Incorrect or missing API key: send Authorization: Bearer <key>, or the subprotocol bearer.<key>.",
            type="authentication_error", code="invalid_api_key"))
        await ws.send_text(denied.model_dump_json())
        await ws.close(1008, "invalid API key")
        return
    socket_id = f"ws_{uuid.uuid4().hex[:16]}"
    await SpeechSocket(ws, speech, settings, socket_id, "csm" if subprotocol else None).run()

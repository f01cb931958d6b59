"""csm-serve as a Pipecat TTS service (the `pipecat` extra): `CsmTTSService` speaks the
server's text-in WebSocket, token streaming in, PCM at the pipeline's rate out."""

from .tts import CsmTTSService, CsmTTSSettings

__all__ = ["CsmTTSService", "CsmTTSSettings"]

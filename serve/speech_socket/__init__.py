"""The text-in WebSocket, /v1/audio/speech/stream: text in as it is written, audio out as it
is spoken (events.py: both dialects' events; session.py: one socket; response.py: one
response, one speech stream; presenters.py: each dialect's framing)."""

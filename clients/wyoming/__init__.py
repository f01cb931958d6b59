"""A Wyoming TTS server (Home Assistant's protocol) in front of a running csm-serve's HTTP API:
`csm-serve wyoming`. It is an API client like any other, so it works with one replica or a
whole cluster behind one Service."""

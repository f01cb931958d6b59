"""A phone call through csm-serve: Twilio Media Streams in front of the text-in socket (bridge.py)."""

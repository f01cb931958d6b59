"""What one card serves: a framework-free replica (no ray, no fastapi; a guard test keeps it
so) that the in-process server serves directly and the Ray deployment wraps.

Modules, from the edges' side inwards:
    records.py        torch-free: SpeechJob, ErrorInfo/ReplicaError, Instances, ReplicaStats
    voice_store.py    torch-free: the voices as files, shared by every replica and ingress
    text_feed.py      torch-free: texts that arrive while a stream speaks (the text-in WebSocket)
    conversation_store.py  torch-free: conversations as files (their turns, bounds, turn lock)
    replica.py        Replica: the pipeline, the context cache, the recorder, stats()
    pipeline.py       texts -> PCM on one decoder row (admission.py: rows and the wait line)
    voices.py         voices on this replica: clips -> Mimi codes -> prefix, in the cache
    context_cache.py  torch-free: computed prefixes, keyed by id + version, bounded in bytes
    recorder.py       the engine's and the cache's metrics
    config.py         ReplicaConfig

The edges import only the torch-free modules (records, voice_store, text_feed, conversation_store, context_cache,
config),
so they never import torch; import each name from its module.
"""

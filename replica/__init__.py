"""What one card serves: a framework-free replica (no ray, no fastapi; a guard test keeps it
so) that the in-process server serves directly and the Ray deployment wraps.

Modules, from the edges' side inwards:
    records.py        torch-free: SpeechJob, ErrorInfo/ReplicaError, Instances, ReplicaStats
    voice_store.py    torch-free: the voices as files, shared by every replica and ingress
    replica.py        Replica: the pipeline, the context cache, the recorder, stats()
    pipeline.py       texts -> PCM on one decoder row (admission.py: rows and the wait line)
    voices.py         voices on this replica: clips -> Mimi codes -> prefix, in the cache
    context_cache.py  torch-free: computed prefixes, keyed by id + version, bounded in bytes
    recorder.py       the engine's and the cache's metrics
    config.py         ReplicaConfig

The edges import only the torch-free modules; names load lazily, so `import replica` or
`from replica.records import SpeechJob` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Replica": "replica.replica",
    "ReplicaConfig": "replica.config",
    "ReplicaError": "replica.records",
    "ReplicaStats": "replica.records",
    "SpeechJob": "replica.records",
    "Voice": "replica.voice_store",
    "VoiceStore": "replica.voice_store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'replica' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

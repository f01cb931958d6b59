"""What runs on one card: a framework-free replica (no ray, no fastapi; a guard test keeps it
so) that the in-process server serves directly and the Ray deployment wraps. The edges never
import it: what crosses is contract/ (the job, the error and stats records, SpeechBackend,
the text feed, the playback clock), what is shared on disk stores/ (voices, conversations).

Modules, from the edges' side inwards:
    replica.py        Replica: the pipeline, the context cache, the recorder, stats()
    pipeline.py       texts -> PCM on one decoder row (admission.py: rows and the wait line)
    admission.py      rows and real-time headroom (realtime.py: the capacity; joins.py: joins)
    voices.py         voices on this replica: clips -> Mimi codes -> prefix, in the cache
    conversations.py  conversations on this replica: turns -> prefix, in the cache
    context_cache.py  torch-free: computed prefixes, keyed by id + version, bounded in bytes
    recorder.py       the engine's and the cache's metrics
    config.py         ReplicaConfig
"""

"""The contract between the protocol edges (serve/) and what serves the model (replica/, or
the Ray deployment of it): the records that cross, and nothing that runs on a card. Torch-free,
no ray, no fastapi; it imports only models' torch-free records and stores/. Import each name
from its module:

    job.py        SpeechJob: one speech request as a replica receives it
    errors.py     ErrorInfo, ReplicaError, error_info, store_error_info: failures as records
    stats.py      Instances, ReplicaStats (and its parts): what a replica reports
    backend.py    SpeechBackend: what the edges need from whatever serves the model
    text_feed.py  TextFeed, PieceDone: texts that arrive while a stream speaks
    playback.py   PlaybackClock: a listener's clock, kept on both sides of the handle
"""

"""One csm-serve for a test module, in-process or behind Ray Serve (the `served` fixtures'
two params), with a callable that says how many streams the engine replica holds now."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from replica.config import ReplicaConfig


@contextlib.contextmanager
def served_by(request, voices: str, engine: dict, settings: dict,
              replica: ReplicaConfig | None = None) -> Iterator[tuple[str, Callable[[], int]]]:
    """(base url, streams held now) for `request.param` "local" or "ray"; `replica`: the replica
    settings (None: the harness's, real-time admission off; ReplicaConfig(): the shipped ones)."""
    if request.param == "local":
        from models import EngineConfig
        from tests.local_server import local_server

        with local_server(voices, EngineConfig(**engine), max_queued_requests=4, replica=replica,
                          **settings) as (url, rep):
            yield url, lambda: rep.stats().num_streams
        return
    from ray import serve

    from tests.ray_serve import deployed

    args = {"engine": engine, "server": {"voices_dir": voices, **settings}, "cpus_per_engine": 1,
            **({"replica": replica.model_dump()} if replica is not None else {})}
    with deployed(request.getfixturevalue("ray_serve"), args) as url:
        handle = serve.get_deployment_handle("SpeechReplica", app_name="csm")
        yield url, lambda: handle.stats.remote().result(timeout_s=30).num_streams

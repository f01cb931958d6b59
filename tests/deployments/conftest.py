"""The Ray Serve application each Ray test module deploys (csm-tiny: 4 slots, 2 queued)."""

import pytest


@pytest.fixture(scope="module")
def app_args(tmp_path_factory):
    return {
        "engine": {"model": "csm-tiny", "device": "cpu", "dtype": "float32", "max_num_seqs": 4},
        "server": {"voices_dir": str(tmp_path_factory.mktemp("voices")),
                   "conversations_dir": str(tmp_path_factory.mktemp("conversations"))},
        "cpus_per_engine": 1,
        "max_queued_requests": 2,
    }


@pytest.fixture(scope="module")
def app_url(ray_serve, app_args):
    from tests.ray_serve import deployed

    with deployed(ray_serve, app_args) as url:
        yield url


def replica_stats():
    """A replica's stats (ReplicaStats: engine counters, pid, threads, card), through its handle."""
    from ray import serve

    return serve.get_deployment_handle("SpeechReplica", app_name="csm").stats.remote().result()

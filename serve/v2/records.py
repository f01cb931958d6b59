"""The v2 metadata, configuration and statistics records, as the JSON the HTTP edge returns.
The gRPC edge parses the very same dicts into Triton's messages (json_format.ParseDict), so
both edges describe the model identically."""

from __future__ import annotations

from contract.stats import Instances
from models.params import SAMPLE_RATE_HZ

from .protocol import AUDIO, EXTENSIONS, PLATFORM, SERVER_NAME, SERVER_VERSION, TEXT, VERSION
from .service import Duration, ModelStats


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def model_metadata(name: str) -> dict:
    return {"name": name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [{"name": TEXT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": AUDIO, "datatype": "FP32", "shape": [-1]}]}


def model_config(name: str, instances: Instances) -> dict:
    """Triton's model configuration: no batch dimension at the protocol level (the engine
    batches every running request per audio frame inside), decoupled (a stream of audio
    responses per request over ModelStreamInfer; unary infer returns the whole audio)."""
    parameters = {"sample_rate_hz": {"string_value": str(SAMPLE_RATE_HZ)},
                  "max_num_seqs": {"string_value": str(instances.max_num_seqs)}}
    return {
        "name": name, "platform": PLATFORM, "backend": SERVER_NAME, "max_batch_size": 0,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": [{"name": TEXT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": AUDIO, "data_type": "TYPE_FP32", "dims": [-1]}],
        "instance_group": [{"name": "engine", "kind": instances.kind, "count": instances.count}],
        "model_transaction_policy": {"decoupled": True},
        "parameters": parameters,
    }


def _duration(d: Duration) -> dict:
    return {"count": d.count, "ns": d.ns}


def model_statistics(stats: dict[str, ModelStats]) -> dict:
    return {"model_stats": [{
        "name": name, "version": VERSION, "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {k: _duration(getattr(s, k)) for k in
                            ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
        "batch_stats": [],
    } for name, s in stats.items()]}

"""Where engine replicas go: the application's arguments and the Ray resources each engine
replica asks for. One card per replica: a Huawei Ascend card is Ray's `NPU` resource (Ray then
sets ASCEND_RT_VISIBLE_DEVICES per replica), an NVIDIA card `num_gpus: 1` (CUDA_VISIBLE_DEVICES).

Two settings, kept apart on purpose: `card` is what a replica asks Ray for (placement), and
`engine.device` is what it computes on. Normally the card follows the device (`card: auto`).
`card: npu` with `engine.device: cpu` rehearses placement and scaling on a cluster whose nodes
only declare NPU resources (simulated cards, `make serve-cluster`), computing on CPU."""

from __future__ import annotations

from typing import Literal

import ray
from pydantic import BaseModel, ConfigDict, Field

from models import EngineConfig
from replica.config import ReplicaConfig

Card = Literal["auto", "npu", "gpu", "none"]


class AppArgs(BaseModel):
    """The `args:` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    replica: ReplicaConfig = Field(default_factory=ReplicaConfig)
    server: dict = Field(default_factory=dict, description="ServerSettings fields")
    card: Card = Field("auto", description="the card each engine replica asks Ray for; auto: from engine.device")
    cpus_per_engine: float = Field(2, gt=0, description="CPU cores per engine replica without a card")
    max_queued_requests: int = Field(32, ge=0, description=(
        "streams that may wait at an engine replica beyond its free rows (batch streams for a row, interactive "
        "ones for a moment: replica/admission.py); Serve's max_ongoing_requests is max_num_seqs plus this, and "
        "each handle queues this many while no replica can take a request"))


def card_for(engine: EngineConfig, card: Card = "auto") -> Card:
    if card != "auto":
        return card
    device = engine.device
    if device == "auto":  # what the cluster offers (a cluster of cards has them when the app is built)
        resources = ray.cluster_resources() if ray.is_initialized() else {}
        device = "npu" if resources.get("NPU") else "cuda" if resources.get("GPU") else "cpu"
    return {"npu": "npu", "cuda": "gpu"}.get(device, "none")


def engine_actor_options(engine: EngineConfig, cpus: float, card: Card = "auto") -> dict:
    """One card per replica: NPU as a custom resource, GPU as num_gpus, else CPUs."""
    match card_for(engine, card):
        case "npu":
            return {"resources": {"NPU": 1}, "num_cpus": 1}
        case "gpu":
            return {"num_gpus": 1, "num_cpus": 1}
        case _:
            return {"num_cpus": cpus}

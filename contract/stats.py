"""What a replica reports of itself (stats, Triton's model configuration): snapshots that
cross to the edges and the Ray controller. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.params import EngineStats


@dataclass(frozen=True)
class ContextCacheStats:
    num_entries: int
    num_bytes: int
    max_bytes: int
    num_hits: tuple[tuple[str, int], ...]  # (kind, count): lookups that found their prefix
    num_misses: tuple[tuple[str, int], ...]  # (kind, count): lookups that had to compute it
    num_evictions: int  # entries dropped to stay within max_bytes
    num_positions: tuple[tuple[str, str, int], ...] = ()  # (kind, reused | computed, positions): requests' contexts


@dataclass(frozen=True)
class RealtimeInputs:
    """What the capacity is computed from, for stats: the idle profile (smoothed) and when it
    was taken (monotonic seconds; None: never), the sizes' fresh serving periods, the fitted
    serving line (seconds per step at no rows, and per row; None: nothing served yet), and
    the prediction per size."""

    profile: tuple[tuple[int, float], ...]
    profiled_at: float | None
    serving: tuple[tuple[int, float], ...]
    line_s: tuple[float, float] | None
    predicted: tuple[tuple[int, float], ...]


class Instances(BaseModel):
    """Where the model runs, for Triton's model configuration: the kind of device (Triton's
    KIND_GPU also stands for an NPU card, KIND_CPU for a CPU engine), how many replicas (one
    per card), the rows each batches and the backbone positions a row holds (the context a
    conversation's turns must fit in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["KIND_GPU", "KIND_CPU"]
    count: int
    max_num_seqs: int
    max_positions: int = 2048


def instance_kind(device_type: str) -> Literal["KIND_GPU", "KIND_CPU"]:
    return "KIND_CPU" if device_type == "cpu" else "KIND_GPU"


@dataclass(frozen=True)
class ReplicaStats:
    """A snapshot of one replica, for tests, health and operators."""

    engine: EngineStats
    contexts: ContextCacheStats
    num_streams: int  # admitted speech streams (each holds a decoder row)
    num_waiting_streams: int  # streams waiting to start (batch ones for a row, interactive ones for a moment)
    streams: tuple[str, ...]  # request ids of the streams this replica is serving or holding
    voices: tuple[str, ...]  # ids of the voices whose context is cached here
    pid: int
    num_threads: int
    card: str  # the card Ray gave this process ("npu:3", "cuda:0") or "none"
    num_batch_streams: int = 0  # of num_streams, those of batch priority
    realtime_capacity: int = 0  # interactive streams this replica predicts it keeps real time (realtime.py)
    headroom: int = 0  # interactive streams that could start here now without waiting
    num_waiting_batch_streams: int = 0  # of num_waiting_streams, those of batch priority
    realtime: RealtimeInputs | None = None  # what the capacity is computed from (realtime.py)
    niceness: int = 0  # the engine thread's CPU niceness (deployments/priority.py)
    num_deferred_joins: int = 0  # texts that waited for the playing streams' slack before joining (joins.py)
    num_refused_streams: int = 0  # streams this replica's admission refused (Overloaded) so far
    node_id: str | None = None  # the Ray node (set by the Ray deployment)
    conversations: tuple[str, ...] = ()  # ids of the conversations whose context is cached here

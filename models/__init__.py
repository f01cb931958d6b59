"""Framework-free CSM engine: loader, devices, iteration-level batching engine, asyncio front.

Imports neither ray nor fastapi (a guard test keeps it so)."""

from .async_engine import AsyncEngine, EngineDeadError, EngineStepError
from .config import EngineConfig
from .engine import Engine
from .loader import LoadedModel, load_model
from .params import EngineStats, FinishReason, GenerationParams, Segment, StepOutput

__all__ = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "EngineStepError",
    "FinishReason",
    "GenerationParams",
    "LoadedModel",
    "Segment",
    "StepOutput",
    "load_model",
]


def build_engine(config: EngineConfig) -> Engine:
    """Load the configured model and build its engine."""
    return Engine(load_model(config.model, config.device, config.dtype), config)

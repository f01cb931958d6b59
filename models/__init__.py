"""Framework-free CSM engine: no ray, no fastapi (a guard test keeps it so).

Sub-packages, in the order a request meets them:
    frontend/  asyncio front: EngineLoop (the step-loop thread), batched Mimi decode worker
    engine.py  Engine: schedule -> run -> update, one thread owns it
    runner/    everything that touches tensors: ModelRunner (KV slots, batched backbone),
               attention, frame sampler (depth loop), sampler, captured steps (graphs.py)
    core/      torch-free: config, prompt, request records, scheduler
    codec/     streaming Mimi decoder, clip encoding
    loading/   devices, built-in models, checkpoint loader

`models.params` and `models.errors` are torch-free, so the HTTP edge uses the same typed
parameters and errors. This package's names load lazily: `import models` or
`from models.params import GenerationParams` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": "models.engine",
    "EngineLoop": "models.frontend.engine_loop",
    "EngineConfig": "models.core.config",
    "EngineDeadError": "models.errors",
    "EngineStepError": "models.errors",
    "Overloaded": "models.errors",
    "RequestError": "models.errors",
    "EngineStats": "models.params",
    "FinishReason": "models.params",
    "GenerationParams": "models.params",
    "Prefix": "models.core.prompt",
    "Segment": "models.params",
    "StepOutput": "models.params",
    "LoadedModel": "models.loading.loader",
    "load_model": "models.loading.loader",
    "build_engine": "models.engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""The asyncio front over the synchronous engine: the step-loop thread (EngineLoop) and
batched streaming Mimi decoding on its own thread (MimiDecodeWorker). What a replica builds
from them (admission, segment chaining, the context cache) lives in the `replica` package."""

"""The asyncio front over the synchronous engine: the step-loop thread (AsyncEngine), and
the speech pipeline built from four parts: admission (the capacity policy), the voice
registry, segment chaining, and batched Mimi decoding on its own thread."""

"""Batched streaming Mimi decode, off the engine's step loop.

Streams hand in chunks of frames for their decoder row; chunks due at the same time are
decoded together in one call on the worker's own thread (and, on accelerators, its own
device stream), so the next engine step is not held up by audio decoding. One thread: the
decodes are serialised anyway, and one thread keeps one malloc arena (varying batch shapes
on many pool threads fragment several). Pending work lives on the event loop; the decoder
is touched only on the decode thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..codec.mimi_stream import StreamingMimiDecoder
from ..core.threads import apply as apply_threads


@dataclass(frozen=True)
class PendingDecode:
    row: int
    is_first: bool  # a new stream's first chunk: the row is reset first, in order with its last user's decodes
    codes: torch.Tensor  # [32, T]
    future: asyncio.Future  # resolves to the chunk's PCM, float32 [T * 1920]

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]


class MimiDecodeWorker:
    def __init__(self, decoder: StreamingMimiDecoder, threads: int | None = None) -> None:
        """`threads`: the decode thread's intra-op thread count (models/core/threads.py)."""
        self.decoder = decoder
        device = decoder.device
        self._side_stream = torch.get_device_module(device).Stream() if device.type != "cpu" else None
        self._pending: list[PendingDecode] = []
        self._drainer: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mimi-decode", initializer=apply_threads if threads else None,
                                          initargs=(threads,) if threads else ())
        self.num_decode_calls = 0  # batched decoder calls (<= chunks decoded)

    async def decode(self, row: int, is_first: bool, frames: list[list[int]]) -> np.ndarray:
        """PCM for `frames` on decoder row `row`, decoded in a batch with whatever other
        streams have due at the same time."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(PendingDecode(row, is_first, torch.tensor(frames).T, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Decode everything pending, one batched call per chunk length (at most one chunk
        per row per call), until nothing is left."""
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, later, rows = [], [], set()
            length = self._pending[0].num_frames
            for item in self._pending:
                if item.num_frames == length and item.row not in rows:
                    batch.append(item)
                    rows.add(item.row)
                else:
                    later.append(item)
            self._pending = later
            try:
                pcm = await loop.run_in_executor(self._thread, self._run, batch)
            except Exception as e:  # the waiting streams raise it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            for item, out in zip(batch, pcm):
                if not item.future.done():  # a stream that went away does not wait any more
                    item.future.set_result(out)

    def _run(self, batch: list[PendingDecode]) -> list[np.ndarray]:
        with torch.inference_mode(), self._stream_context():
            resets = [item.row for item in batch if item.is_first]
            if resets:
                self.decoder.reset(resets)
            pcm = self.decoder.decode([item.row for item in batch], torch.stack([item.codes for item in batch]))
            self.num_decode_calls += 1
            return list(pcm.float().cpu().numpy())  # .cpu() waits for this stream only

    def _stream_context(self):
        if self._side_stream is None:
            return contextlib.nullcontext()
        return torch.get_device_module(self.decoder.device).stream(self._side_stream)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

"""Capturing a step function for fixed shapes and replaying it: device graphs or torch.compile.

The runner hands over functions of static input tensors (filled in place before each replay)
that return one output tensor. Three ways to make them cheap to launch:

- `graphs` on cuda: `torch.cuda.CUDAGraph`, captured once per shape on a side stream, all
  graphs sharing one memory pool (captured largest first, so smaller ones reuse its blocks).
- `graphs` on npu: the same with torch_npu's `torch.npu.NPUGraph` (aclgraph), where the
  installed torch_npu provides it.
- `compile`: the runner compiles its building blocks with `torch.compile(dynamic=False)`
  (inductor on cpu and cuda with `reduce-overhead`, which adds CUDA graphs; torchair's npu
  backend on npu when it is installed), and "capturing" calls the function once so every
  shape is compiled at warm-up, not on a user's request. The blocks are the backbone step and
  one depth step: compiling the unrolled 31-step loop whole takes minutes of C++ compilation
  on a CPU for no gain. On cuda `graphs` (the default) captures more per replay: a decoding
  batch's whole frame (backbone step, 31-step depth loop, 32 draws) is one graph there, where
  `compile` replays one graph per depth step.

The model code knows none of this; `enforce_eager` in the engine config turns it all off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)
CaptureMode = Literal["graphs", "compile"]


def resolve_capture(mode: str, device: torch.device, enforce_eager: bool) -> CaptureMode | None:
    """The capture mode for a device, or None for eager. `auto` is device graphs on cuda and
    npu (when torch_npu offers NPUGraph) and eager on cpu. On cpu `compile` does not pay for
    its warm-up (measured with benchmarks/op_count.py on a 2-core CPU, bf16, in one run:
    csm-tiny steps 19% faster at batch 1 but 24-31% slower at 8 and 16, where real-time
    capacity is decided; csm-1b-random, bound by memory bandwidth, within 10% either way;
    70-120 s of cold warm-up per engine), so auto keeps cpu eager."""
    if enforce_eager:
        return None
    if mode == "auto":
        if device.type == "cuda" or (device.type == "npu" and hasattr(torch.npu, "NPUGraph")):
            return "graphs"
        if device.type == "npu":
            log.warning("this torch_npu has no NPUGraph: the npu engine runs eager")
        return None
    if mode == "graphs" and device.type not in ("cuda", "npu"):
        raise ValueError(f"capture: device graphs need cuda or npu, not {device.type} (use compile or auto)")
    if mode == "graphs" and device.type == "npu" and not hasattr(torch.npu, "NPUGraph"):
        raise ValueError("capture: this torch_npu has no NPUGraph (use compile, auto or enforce_eager)")
    return mode  # type: ignore[return-value]


def bucket_for(n: int, buckets: list[int]) -> int | None:
    """The smallest bucket holding n, or None when n is larger than all of them."""
    return next((b for b in buckets if b >= n), None)


class Capturer:
    """Turns `fn(*inputs) -> Tensor` into a replayable callable for the inputs' shapes."""

    def __init__(self, mode: CaptureMode, device: torch.device) -> None:
        self.mode, self.device = mode, device
        if mode == "graphs":
            self._dev = torch.cuda if device.type == "cuda" else torch.npu
            self._graph_cls = torch.cuda.CUDAGraph if device.type == "cuda" else torch.npu.NPUGraph
            self._pool = self._dev.graph_pool_handle()

    def capture(self, fn: Callable[..., torch.Tensor], *inputs) -> Callable[[], torch.Tensor]:
        """Returns `replay()`: runs fn on the current contents of `inputs` and returns its
        output tensor, which the next replay overwrites (copy what must be kept)."""
        if self.mode == "compile":
            fn(*inputs)  # compiles the compiled blocks inside for these shapes
            return lambda: fn(*inputs)
        return self._graph(fn, inputs)

    def compile(self, fn: Callable) -> Callable:
        """fn compiled for static shapes (one specialisation per shape it is called with)."""
        return torch.compile(fn, dynamic=False, **self._compile_options())

    def _graph(self, fn, inputs) -> Callable[[], torch.Tensor]:
        dev = self._dev
        side = dev.Stream()
        side.wait_stream(dev.current_stream())
        with dev.stream(side):  # warm-up outside the capture (lazy inits, workspace allocations)
            for _ in range(2):
                fn(*inputs)
        dev.current_stream().wait_stream(side)
        graph = self._graph_cls()
        with dev.graph(graph, pool=self._pool):
            out = fn(*inputs)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay

    def _compile_options(self) -> dict:
        if self.device.type == "cuda":
            return {"mode": "reduce-overhead"}
        if self.device.type == "npu":
            try:
                import torchair
            except ImportError:
                log.warning("torchair is not installed: torch.compile on npu uses the default backend")
                return {}
            config = torchair.CompilerConfig()
            config.mode = "reduce-overhead"  # torchair's aclgraph mode
            return {"backend": torchair.get_npu_backend(compiler_config=config)}
        return {}


@dataclass
class CapturedStep:
    """A captured step and the static inputs it reads: before each replay, `slots` and each
    of `ints` (decode positions and frame indices, or frame indices) are filled from the
    pinned host buffer `host` ([1 + len(ints), B]; an asynchronous copy, no sync) and
    `hidden` (the frame sampler's input) from the caller. Rows past the real ones are
    padding: the scratch slot at position/frame 0, whose KV and sampling state nothing else
    reads then."""

    replay: Callable[[], torch.Tensor]
    host: torch.Tensor
    slots: torch.Tensor  # [B]
    ints: tuple[torch.Tensor, ...]  # each [B]
    hidden: torch.Tensor | None = None  # [B, H]
    num_replays: int = 0

    @property
    def batch_size(self) -> int:
        return self.host.shape[1]

    def run(self, slots: list[int], ints: tuple[list[int], ...], pad_slot: int,
            hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Replay for these rows (`ints`: one list per static integer input); returns the real
        rows of the output (overwritten by the next replay)."""
        n, pad = len(slots), self.batch_size - len(slots)
        self.host.copy_(torch.tensor([slots + [pad_slot] * pad, *(values + [0] * pad for values in ints)]))
        self.slots.copy_(self.host[0], non_blocking=True)
        for i, static in enumerate(self.ints):
            static.copy_(self.host[i + 1], non_blocking=True)
        if hidden is not None:
            self.hidden[:n].copy_(hidden)
        self.num_replays += 1
        return self.replay()[:n]


def host_buffer(rows: int, batch: int, device: torch.device) -> torch.Tensor:
    """A [rows, batch] host staging buffer for a captured step's integer inputs: pinned on
    accelerators, so the copy to the device is truly asynchronous. Reusing it next step is
    safe: every step ends by reading its codes back, after all its copies."""
    try:
        return torch.zeros(rows, batch, dtype=torch.long, pin_memory=device.type != "cpu")
    except RuntimeError:  # no pinned memory on this backend
        return torch.zeros(rows, batch, dtype=torch.long)


def allow_recompiles(n: int) -> None:
    """torch.compile specialises per shape; let dynamo keep one entry per captured bucket."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), n))

"""Device and dtype selection, and one memory reader per device kind.

torch_npu is imported only when the device is npu, and always after transformers (importing
it first breaks transformers' own import on CANN builds). Ray pins a replica to one card
(ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES), so the replica always uses index 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def import_torch_npu() -> ModuleType:
    """Import torch_npu (registers torch.npu). The seam tests replace to cover the npu branch."""
    import transformers  # noqa: F401  (must precede torch_npu)

    os.environ.setdefault("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True")
    return importlib.import_module("torch_npu")


def is_npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import_torch_npu()
    return bool(torch.npu.is_available())


def resolve_device(name: str) -> torch.device:
    """`auto` prefers npu, then cuda, then cpu. An explicit accelerator that is missing fails."""
    if name == "auto":
        if is_npu_available():
            return torch.device("npu", 0)
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    if name == "npu":
        import_torch_npu()
        if not torch.npu.is_available():
            raise RuntimeError("device 'npu' requested but no Ascend NPU is visible")
        return torch.device("npu", 0)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible")
        return torch.device("cuda", 0)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be auto, npu, cuda or cpu, got {name!r}")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX): bf16 then beats fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on accelerators; on CPU bfloat16 where it is native, else float32."""
    if name != "auto":
        return _DTYPES[name]
    if device.type in ("npu", "cuda") or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def device_label(device: torch.device) -> str:
    """`npu:0`, `cuda:0` or `cpu`: the `device` label on memory metrics."""
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


def _cuda_memory(device: torch.device) -> tuple[int, int]:
    free, total = torch.cuda.mem_get_info(device)
    return total - free, total


def _npu_memory(device: torch.device) -> tuple[int, int]:
    free, total = torch.npu.mem_get_info(device)
    return total - free, total


def _cpu_memory(device: torch.device) -> tuple[int, int]:
    """Process RSS against physical memory."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * page
    except OSError:  # not Linux: peak RSS is the best portable figure
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, total


_MEMORY_READERS = {"cuda": _cuda_memory, "npu": _npu_memory, "cpu": _cpu_memory}


def memory_bytes(device: torch.device) -> tuple[int, int]:
    """(used, total) bytes of the device's memory; on CPU the process RSS and physical RAM."""
    return _MEMORY_READERS[device.type](device)


"""Device and dtype selection; the npu branch through its seam (torch_npu cannot load here)."""

import os
import subprocess
import sys
import types

import pytest
import torch

import models.loading.device as dev


def test_cpu_and_auto_resolve_to_cpu_here():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not dev.is_npu_available():
        assert dev.resolve_device("auto") == torch.device("cpu")


def test_missing_accelerator_fails_clearly():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            dev.resolve_device("cuda")
    with pytest.raises(ValueError, match="device"):
        dev.resolve_device("tpu")


def test_dtype_defaults(monkeypatch):
    assert dev.resolve_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert dev.resolve_dtype("float32", torch.device("cuda", 0)) is torch.float32
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.resolve_dtype("auto", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16


def test_cpu_memory_is_rss_against_physical_ram():
    used, total = dev.memory_bytes(torch.device("cpu"))
    assert 10 * 2**20 < used < total
    assert dev.device_label(torch.device("cpu")) == "cpu"
    assert dev.device_label(torch.device("cuda", 0)) == "cuda:0"


def test_import_torch_npu_imports_transformers_first(monkeypatch):
    """The real import function, with a stand-in torch_npu module in sys.modules."""
    fake = types.ModuleType("torch_npu")
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.delenv("PYTORCH_NPU_ALLOC_CONF", raising=False)
    assert dev.import_torch_npu() is fake
    assert "transformers" in sys.modules
    import os

    assert os.environ["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"


FAKE_TORCH_NPU = """
import types, torch
# What the real torch_npu does on import: name the PrivateUse1 backend 'npu' and register
# torch.npu; memory figures and availability are stand-ins.
torch.utils.rename_privateuse1_backend("npu")
npu = types.SimpleNamespace(
    is_available=lambda: AVAILABLE,
    mem_get_info=lambda device=None: (20 * 2**30, 64 * 2**30),
    synchronize=lambda device=None: None,
)
torch._register_device_module("npu", npu)


def npu_fusion_attention(*args, **kwargs):  # transformers imports it when torch_npu is present
    raise NotImplementedError
"""

CHECK = """
import sys, torch
import models.loading.device as dev
device = dev.resolve_device("auto")
print(device, dev.resolve_dtype("auto", device), dev.memory_bytes(device), dev.device_label(device))
from models.runner.graphs import resolve_capture
without = str(resolve_capture("auto", device, False))
try:
    resolve_capture("graphs", device, False)
except ValueError:
    without += " refused"
torch.npu.NPUGraph = object  # torch_npu versions with aclgraph capture
print(without, resolve_capture("auto", device, False), resolve_capture("auto", device, True))
print(dev.resolve_device("npu"))
"""


def _run_with_fake_npu(tmp_path, available: bool):
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"AVAILABLE = {available}\n" + FAKE_TORCH_NPU)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=120)


def test_npu_branch_at_the_seam(tmp_path):
    """In a fresh interpreter, with a stand-in torch_npu package on the path: auto prefers
    npu, bf16 is the default, memory comes from torch.npu.mem_get_info, decode steps are
    captured as NPU graphs only where torch_npu offers them."""
    result = _run_with_fake_npu(tmp_path, available=True)
    assert result.returncode == 0, result.stderr
    first, capture, second = result.stdout.splitlines()
    assert first == f"npu:0 torch.bfloat16 ({44 * 2**30}, {64 * 2**30}) npu:0"
    assert capture == "None refused graphs None"  # NPU graphs only where torch_npu has NPUGraph; enforce_eager wins
    assert second == "npu:0"


def test_npu_requested_but_absent(tmp_path):
    result = _run_with_fake_npu(tmp_path, available=False)
    assert result.returncode != 0 and "no Ascend NPU is visible" in result.stderr
    assert result.stdout.startswith("cpu ")  # auto fell back to the CPU

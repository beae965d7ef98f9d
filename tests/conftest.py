"""Fixtures shared by every test folder; plain helpers live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, TEMPLATES, tiny_config


@pytest.fixture
def fixture_registry():
    from flan_builder.specs import load_registry

    return load_registry(FIXTURE_TEMPLATES)


@pytest.fixture(scope="session")
def registry():
    from flan_builder.specs import load_registry

    return load_registry(TEMPLATES)


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch):
    """Tests choose their own templates / data dirs and never see a real Hub token."""
    for name in ("FLAN_TEMPLATES_DIR", "FLAN_DATA_DIR", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from flan_builder.models import load_tokenizer, resolve_model

    try:
        source = resolve_model("smollm2-135m")
    except Exception as exc:  # noqa: BLE001 - the model package is part of the install command
        pytest.skip(f"smollm2-135m not installed: {exc}")
    return load_tokenizer(source)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved like any local model directory, with the SmolLM2 tokenizer."""
    from transformers import LlamaForCausalLM, set_seed

    set_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(tiny_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_build(tmp_path_factory) -> Path:
    """The fixture tasks built with nli held out (paraphrase blocked): qa + multi train."""
    from flan_builder.build import BuildConfig, build
    from flan_builder.specs import load_registry

    out = tmp_path_factory.mktemp("builds") / "toy-nli"
    build(BuildConfig(heldout="nli", out=out, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES),
          registry=load_registry(FIXTURE_TEMPLATES))
    return out

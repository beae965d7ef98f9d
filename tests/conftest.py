"""Shared paths and fixtures: the real data in ../shared/data, and the hand-written fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_TEMPLATES = FIXTURES / "templates"
FIXTURE_DATA = FIXTURES / "data"
SHARED_DATA = Path(os.environ.get("FLAN_SHARED_DATA", REPO.parent / "shared" / "data"))

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.json").is_file(),
    reason=f"real datasets not found at {SHARED_DATA} (set FLAN_SHARED_DATA)",
)


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


def write_spec(root: Path, cluster: str, name: str, text: str) -> Path:
    """Write a hand-made spec file under ``root/cluster/name.yaml``."""
    path = root / cluster / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_rows(root: Path, mirror: str, split: str, rows: list[dict]) -> Path:
    """Write a hand-made mirror split ``root/mirror/split.jsonl``."""
    import json

    path = root / mirror / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- tiny models and a fixture build, shared by the training and evaluation tests ------------

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
KV_DIM = KV_HEADS * HEAD_DIM


def tiny_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTER,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, max_position_embeddings=512)


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

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

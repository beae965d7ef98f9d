"""Publishing: the dataset card and the push flow, checked without network."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import DatasetCard

from flan_builder.build import BuildConfig, build
from flan_builder.card import HUB_LICENSES
from flan_builder.cli import main
from flan_builder.publish import stage
from flan_builder.specs import load_registry
from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, SHARED_DATA, requires_shared_data

FIXTURES_ONLY = ["--templates-dir", str(FIXTURE_TEMPLATES), "--no-shipped-templates"]

TOKEN = "hf_SeCrEtToKeN0123456789"


@pytest.fixture
def built(tmp_path):
    out = tmp_path / "ds"
    build(BuildConfig(heldout="nli", out=out, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES))
    return out


def test_card_header_is_valid_hub_metadata(built, tmp_path):
    registry = load_registry(FIXTURE_TEMPLATES)
    card_path, manifest_path = stage(built, tmp_path / "stage", registry)
    text = card_path.read_text()
    card = DatasetCard(text)  # parses the YAML header the way the Hub does
    meta = card.data.to_dict()
    # Every source that is in the dataset (train or held-out) has its licence listed.
    assert meta["license"] == ["apache-2.0", "mit", "unknown"]
    assert set(meta["license"]) <= HUB_LICENSES
    assert "text-generation" in meta["task_categories"]
    assert meta["size_categories"] == ["n<1K"]
    assert "heldout-nli" in meta["tags"]
    body = card.text
    assert "Held-out cluster:** nli" in body
    assert json.loads(manifest_path.read_text())["content_hash"]["all"] in body
    assert "| toy_nli | nli | heldout | 12 |" in body


@requires_shared_data
def test_real_card_lists_non_commercial_sources(tmp_path):
    out = tmp_path / "ds"
    build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, tasks=["aeslc", "web_nlg",
                                                                           "dream", "trec"]))
    card_path, _ = stage(out, tmp_path / "stage", load_registry())
    card = DatasetCard(card_path.read_text())
    assert "cc-by-nc-sa-4.0" in card.data.license
    assert "Non-commercial sources:** aeslc, dream, web_nlg" in card.text
    header = yaml.safe_load(card_path.read_text().split("---")[1])
    assert header["size_categories"] == ["10K<n<100K"]


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


@pytest.fixture
def hub(monkeypatch):
    import datasets
    import huggingface_hub

    recorder = _Recorder()

    def create_repo(self, repo_id, **kwargs):
        recorder.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_file(self, **kwargs):
        with open(kwargs["path_or_fileobj"], encoding="utf-8") as handle:
            recorder.calls.append(("upload_file", kwargs["path_in_repo"], handle.read()))

    def push_to_hub(self, repo_id, **kwargs):
        recorder.calls.append(("push_to_hub", repo_id, kwargs, sorted(self)))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", push_to_hub)
    return recorder


def test_push_is_private_by_default_card_first_token_from_env(built, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = main(["push", str(built), "me/toy-flan", *FIXTURES_ONLY])
    out = capsys.readouterr()
    assert code == 0
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_file", "upload_file", "push_to_hub"]
    assert hub.calls[0][2]["private"] is True
    assert hub.calls[1][1] == "README.md" and hub.calls[1][2].startswith("---\n")
    assert hub.calls[2][1] == "manifest.json"
    assert hub.calls[3][2]["private"] is True and hub.calls[3][2]["token"] == TOKEN
    assert hub.calls[3][3] == ["heldout", "train"]
    assert TOKEN not in out.out + out.err
    assert "published (private)" in out.out


def test_public_flag(built, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(built), "me/toy-flan", "--public",
                 *FIXTURES_ONLY]) == 0
    assert hub.calls[0][2]["private"] is False and hub.calls[3][2]["private"] is False


def test_missing_token_is_a_clear_error(built, hub, capsys):
    assert main(["push", str(built), "me/toy-flan", *FIXTURES_ONLY]) == 2
    assert "set HF_TOKEN" in capsys.readouterr().err
    assert hub.calls == []


def test_hub_errors_never_print_the_token(built, monkeypatch, capsys):
    import huggingface_hub

    def fail(self, repo_id, **kwargs):
        raise RuntimeError(f"401 Unauthorized for token {TOKEN}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fail)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(built), "me/toy-flan", *FIXTURES_ONLY]) == 2
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and TOKEN not in err and "***" in err


def test_build_push_to_hub_flag(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code = main(["build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA), "--out",
                 str(tmp_path / "o"), *FIXTURES_ONLY,
                 "--push-to-hub", "me/toy-flan"])
    assert code == 0
    assert [c[0] for c in hub.calls][-1] == "push_to_hub"

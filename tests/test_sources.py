"""Sources: the local mirror, and the Hub code path (``datasets.load_dataset``) run offline."""

from __future__ import annotations

import pytest

from flan_builder.errors import FlanError
from flan_builder.sources import available_roles, load_split, resolve_data_dir
from flan_builder.specs import load_spec
from flan_builder.templating import TaskRenderer
from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, write_spec


def hub_spec(tmp_path, hub_id: str):
    return load_spec(write_spec(tmp_path, "nli", "hubbed", f"""
task: hubbed
cluster: nli
type: classification
source: {{hub_id: "{hub_id}", mirror: toy_nli, splits: {{train: train, eval: validation}}}}
fields: [premise, hypothesis, label]
options: ["yes", "no"]
answer: label
templates:
  - {{id: t1, input: "{{{{ premise }}}} => {{{{ hypothesis }}}}?"}}
"""))


def test_hub_path_loads_through_datasets(tmp_path):
    # A local folder is a valid `path` for datasets.load_dataset: the same call the Hub uses.
    spec = hub_spec(tmp_path, str(FIXTURE_DATA / "toy_nli"))
    hub_rows = load_split(spec, "eval", None)
    mirror_rows = load_split(spec, "eval", FIXTURE_DATA)
    assert hub_rows.origin.startswith("hub:") and len(hub_rows) == len(mirror_rows) == 4
    assert hub_rows.take([3, 1]) == mirror_rows.take([3, 1])
    example = TaskRenderer(spec).render(hub_rows.take([1])[0], 0)
    assert example.target == "no"


def test_unreachable_hub_dataset_is_a_clear_error(tmp_path):
    spec = hub_spec(tmp_path, "no-such-user/no-such-dataset")
    with pytest.raises(FlanError, match="could not load no-such-user/no-such-dataset.*--data-dir"):
        load_split(spec, "train", None)


def test_mirror_errors_say_what_is_missing(tmp_path):
    spec = load_spec(FIXTURE_TEMPLATES / "sentiment" / "toy_multi.yaml")
    with pytest.raises(FlanError, match="has no eval split"):
        load_split(spec, "eval", FIXTURE_DATA)
    (tmp_path / "toy_multi").mkdir()
    (tmp_path / "toy_multi" / "train.jsonl").write_text('{"text": "a", "choices": ["x"]\n')
    with pytest.raises(FlanError, match=r"train.jsonl:1 is not valid JSON"):
        load_split(spec, "train", tmp_path)
    assert available_roles(spec, FIXTURE_DATA) == {"train": True}


def test_data_dir_from_environment(monkeypatch, tmp_path):
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("FLAN_DATA_DIR", str(FIXTURE_DATA))
    assert resolve_data_dir(None) == FIXTURE_DATA
    with pytest.raises(FlanError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")

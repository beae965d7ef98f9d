"""Task specs: every real dataset has one, in its MANIFEST cluster, with enough phrasings."""

from __future__ import annotations

import json

import pytest

from flan_builder.errors import FlanError
from flan_builder.specs import load_registry, load_spec
from tests.helpers import SHARED_DATA, TEMPLATES, requires_shared_data, write_spec


@requires_shared_data
def test_every_shared_dataset_has_a_spec_in_its_manifest_cluster(registry):
    manifest = json.loads((SHARED_DATA / "MANIFEST.json").read_text())
    included = [d for d in manifest if d["status"] == "included"]
    assert len(included) == 32
    by_mirror = {spec.source.mirror: spec for spec in registry.tasks.values()}
    for entry in included:
        spec = by_mirror.get(entry["id"])
        assert spec is not None, f"no spec for {entry['id']}"
        assert spec.cluster == entry["cluster"], entry["id"]
        assert spec.path.parent.name == entry["cluster"]
        # The spec's splits are the files that exist in the mirror.
        files = {f.removesuffix(".jsonl") for f in entry["files"]}
        assert set(spec.source.splits.values()) == files, entry["id"]
        assert spec.source.hub_id.split(" ")[0] in entry["hf_equivalent"]["hub_id"]


def test_every_task_has_ten_templates_and_two_inverted(registry):
    assert len(registry.tasks) >= 32
    for spec in registry.tasks.values():
        assert len(spec.templates) >= 10, spec.name
        if spec.source.tabular is None:  # a table row is not something to ask a model to write
            assert sum(t.inverted for t in spec.templates) >= 2, spec.name


def test_option_tasks_never_write_options_into_templates(registry):
    # The OPTIONS suffix is one switch in the builder; a template that spells it out
    # would show it twice, or keep it in the no-options ablation.
    for spec in registry.tasks.values():
        for template in spec.templates:
            assert "OPTIONS" not in template.input, (spec.name, template.id)


def test_unknown_key_is_named(tmp_path):
    path = write_spec(tmp_path, "nli", "bad", """
task: bad
cluster: nli
type: classification
source: {hub_id: x/y, mirror: bad, splits: {train: train}}
fields: [a, label]
options: ["yes", "no"]
answer: label
templatse: []
templates:
  - {id: t1, input: "{{ a }}"}
""")
    with pytest.raises(FlanError, match="unknown key.*templatse"):
        load_spec(path)


def test_missing_answer_for_classification_is_an_error(tmp_path):
    path = write_spec(tmp_path, "nli", "bad", """
task: bad
cluster: nli
type: classification
source: {hub_id: x/y, mirror: bad, splits: {train: train}}
fields: [a, label]
options: ["yes", "no"]
templates:
  - {id: t1, input: "{{ a }}"}
""")
    with pytest.raises(FlanError, match="needs 'answer'"):
        load_spec(path)


def test_spec_in_wrong_cluster_folder_is_an_error(tmp_path):
    write_spec(tmp_path, "sentiment", "bad", """
task: bad
cluster: nli
type: generation
source: {hub_id: x/y, mirror: bad, splits: {train: train}}
fields: [a]
references: "[a]"
templates:
  - {id: t1, input: "{{ a }}"}
""")
    with pytest.raises(FlanError, match="under sentiment/"):
        load_registry(tmp_path)


def test_registry_lists_the_eleven_language_clusters_and_the_opt_in_ones(registry):
    assert registry.clusters == sorted([
        "closed_book_qa", "commonsense", "coreference", "nli", "paraphrase",
        "reading_comprehension", "sentiment", "struct_to_text", "summarization",
        "topic_classification_misc", "translation", "tabular", "cot", "math",
    ])
    # tabular (LIFT), cot and math (the Flan Collection's) are opt-in: every one of their tasks, no other
    assert {s.name for s in registry.tasks.values() if registry.is_opt_in(s)} == {
        s.name for c in ("tabular", "cot", "math") for s in registry.in_cluster(c)}
    assert registry.root == TEMPLATES
    # every cluster folder carries its facts as data
    assert set(registry.cluster_files) == set(registry.clusters)


def test_evaluation_facts_come_from_the_task_then_its_cluster(registry):
    rte, rouge, diabetes, iris = (registry.task(n) for n in ("super_glue_rte", "aeslc", "diabetes", "iris"))
    assert registry.evaluation(rte).to_json() == {"output_type": "multiple_choice", "metric": "acc",
                                                  "max_new_tokens": 32, "stop": []}
    assert (registry.evaluation(rouge).metric, registry.evaluation(rouge).max_new_tokens) == (
        "flan_rouge", 128)
    assert (registry.evaluation(diabetes).metric, registry.evaluation(diabetes).max_new_tokens) == (
        "flan_regression", 12)  # the task's own keys win over the cluster's
    assert registry.evaluation(iris).output_type == "multiple_choice"
    assert registry.siblings("nli") == {"paraphrase"} and registry.siblings("sentiment") == set()


def test_a_cluster_file_with_an_unknown_key_names_it(tmp_path):
    write_spec(tmp_path, "sentiment", "senti", """
task: senti
cluster: sentiment
type: generation
source: {hub_id: x/senti, splits: {eval: validation}}
fields: [a]
references: "[a]"
templates:
  - {id: t1, input: "{{ a }}"}
""")
    (tmp_path / "sentiment" / "_cluster.yaml").write_text("siblngs: [nli]\n", encoding="utf-8")
    with pytest.raises(FlanError, match=r"_cluster.yaml:1: unknown key\(s\) siblngs"):
        load_registry(tmp_path)

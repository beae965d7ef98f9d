"""FLAN's held-out rules on the fixture registry and on the real one."""

from __future__ import annotations

import pytest

from flan_builder.errors import FlanError
from flan_builder.heldout import plan_split
from flan_builder.specs import load_registry
from tests.helpers import write_spec


def names(specs):
    return sorted(s.name for s in specs)


def test_holding_out_nli_also_removes_paraphrase(fixture_registry):
    plan = plan_split(fixture_registry, "nli")
    assert plan.blocked_clusters == ["nli", "paraphrase"]
    assert names(plan.heldout_tasks) == ["toy_nli"]
    assert names(plan.train_tasks) == ["toy_multi", "toy_qa"]
    assert "sibling" in plan.excluded["toy_para"]


def test_holding_out_paraphrase_also_removes_nli(fixture_registry):
    plan = plan_split(fixture_registry, "paraphrase")
    assert names(plan.heldout_tasks) == ["toy_para"]
    assert "toy_nli" in plan.excluded and "toy_nli" not in names(plan.train_tasks)


def test_dataset_in_two_clusters_leaves_training_with_either(fixture_registry):
    # toy_multi sits in sentiment and qa: holding out qa must drop it from training.
    plan = plan_split(fixture_registry, "qa")
    assert "toy_multi" not in names(plan.train_tasks)
    assert "also in the held-out cluster qa" in plan.excluded["toy_multi"]
    assert names(plan.train_tasks) == ["toy_nli", "toy_para"]


def test_reading_comprehension_siblings(tmp_path):
    for cluster, name in [("reading_comprehension", "rc"),
                          ("reading_comprehension_with_commonsense", "rcc"),
                          ("sentiment", "senti")]:
        write_spec(tmp_path, cluster, name, f"""
task: {name}
cluster: {cluster}
type: generation
source: {{hub_id: x/{name}, mirror: {name}, splits: {{train: train, eval: validation}}}}
fields: [a]
references: "[a]"
templates:
  - {{id: t1, input: "{{{{ a }}}}"}}
""")
    # the sibling is named on one side only: the rule holds both ways
    (tmp_path / "reading_comprehension" / "_cluster.yaml").write_text(
        "siblings: [reading_comprehension_with_commonsense]\n", encoding="utf-8")
    registry = load_registry(tmp_path)
    plan = plan_split(registry, "reading_comprehension_with_commonsense")
    assert names(plan.train_tasks) == ["senti"]
    assert plan_split(registry, "reading_comprehension").blocked_clusters == [
        "reading_comprehension", "reading_comprehension_with_commonsense"]
    assert names(plan.heldout_tasks) == ["rcc"]


def test_none_builds_a_train_only_plan(fixture_registry):
    plan = plan_split(fixture_registry, "none")
    assert plan.heldout is None and plan.heldout_tasks == []
    assert names(plan.train_tasks) == ["toy_multi", "toy_nli", "toy_para", "toy_qa"]


def test_unknown_cluster_lists_the_valid_ones(fixture_registry):
    with pytest.raises(FlanError, match="unknown cluster 'nlii'; valid clusters: nli, paraphrase, qa"):
        plan_split(fixture_registry, "nlii")


def test_real_registry_nli_plan(registry):
    plan = plan_split(registry, "nli")
    assert names(plan.heldout_tasks) == ["glue_qnli", "glue_wnli", "super_glue_cb", "super_glue_rte"]
    trained = names(plan.train_tasks)
    assert not {"glue_mrpc", "glue_stsb"} & set(trained)
    # Evaluation-only datasets cannot train, and say why.
    assert plan.excluded["piqa"] == "no train split (evaluation-only dataset)"
    assert len(trained) == 18

"""FLAN's number-of-clusters ablation as a build option: ``flan build --num-train-clusters N``."""

from __future__ import annotations

from collections import Counter

from flan_builder.build import BuildConfig, build
from flan_builder.heldout import cluster_order, plan_split
from flan_builder.mixing import MixingConfig
from tests.helpers import SHARED_DATA, assert_one_line_error, requires_shared_data


def test_the_first_n_clusters_by_number_of_training_tasks(registry):
    full = plan_split(registry, "nli")
    counts = Counter(spec.cluster for spec in full.train_tasks)
    order = cluster_order(full.train_tasks)
    assert order == sorted(counts, key=lambda c: (-counts[c], c))
    assert [counts[c] for c in order] == sorted(counts.values(), reverse=True)
    assert full.to_json()["train_clusters"] == order
    for n in (1, 2, 4, len(order)):
        plan = plan_split(registry, "nli", num_train_clusters=n)
        assert plan.to_json()["train_clusters"] == order[:n]
        kept = {s.name for s in full.train_tasks if s.cluster in order[:n]}
        assert {s.name for s in plan.train_tasks} == kept
        dropped = {s.name for s in full.train_tasks} - {s.name for s in plan.train_tasks}
        assert all(plan.excluded[name] == f"not among the first {n} training clusters (--num-train-clusters)"
                   for name in dropped)
        assert [s.name for s in plan.heldout_tasks] == [s.name for s in full.heldout_tasks]


def test_too_many_clusters_is_a_one_line_error(tmp_path, capsys, registry):
    from flan_builder.cli import main

    available = len(cluster_order(plan_split(registry, "nli").train_tasks))
    code = main(["build", "--heldout", "nli", "--out", str(tmp_path / "x"),
                 "--num-train-clusters", str(available + 1)])
    assert_one_line_error(code, capsys.readouterr().err,
                          f"--num-train-clusters {available + 1}: holding out nli",
                          f"{available} clusters train", f"give 1 to {available}")
    assert not (tmp_path / "x").exists()


@requires_shared_data
def test_the_manifest_records_the_count_and_the_clusters_and_held_out_rows_stay(tmp_path):
    def run(name, n):
        config = BuildConfig(heldout="nli", out=tmp_path / name, data_dir=SHARED_DATA, max_eval_rows=5,
                             mixing=MixingConfig(total=300), num_train_clusters=n)
        return build(config).manifest

    one, every = run("one", 1), run("all", None)
    first = every["split_plan"]["train_clusters"][0]
    assert one["config"]["num_train_clusters"] == 1 and every["config"]["num_train_clusters"] is None
    assert one["split_plan"]["train_clusters"] == [first]
    assert set(one["counts"]["train"]["per_cluster"]) == {first}
    assert one["counts"]["train"]["total"] == 300
    assert one["content_hash"]["heldout"] == every["content_hash"]["heldout"]

"""Sweep recipes (training/sweep.py): FLAN's ablations as one recipe with one run per point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flan_builder.cli import main
from flan_builder.errors import FlanError
from flan_builder.training.recipe import load_recipe
from flan_builder.training.sweep import load_runs
from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, REPO, assert_one_line_error, make_recipe

SWEEPS = {
    "ablation-prompt-style-nli": ("prompt_style", {p: p for p in ("instructions", "no_template",
                                                                  "dataset_name")}),
    "ablation-clusters-nli": ("num_train_clusters", {"c1": 1, "c2": 2, "c4": 4, "all": None}),
    "ablation-templates-nli": ("max_templates", {"t1": 1, "t2": 2, "t4": 4, "t10": 10}),
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_a_shipped_sweep_is_heldout_nli_but_for_its_one_setting(name):
    key, values = SWEEPS[name]
    heldout = load_recipe(REPO / "train" / "heldout-nli.yaml")
    runs = load_runs(REPO / "train" / f"{name}.yaml")
    assert [r.name for r in runs] == [f"{name}-{point}" for point in values]
    assert [r.output for r in runs] == [f"runs/{name}-{point}" for point in values]
    assert [r.dataset_path for r in runs] == [f"build/{name}-{point}" for point in values]
    for run, value in zip(runs, values.values(), strict=True):
        # sized as train/heldout-nli.yaml: same model, method, steps, batch, seed; one build key differs
        assert (run.model, run.heldout, run.peft, run.sft, run.train) == \
            (heldout.model, heldout.heldout, heldout.peft, heldout.sft, heldout.train)
        assert run.sft["max_steps"] == 300
        assert run.build[key] == value
        assert {k: v for k, v in run.build.items() if k != key} == \
            {k: v for k, v in heldout.build.items() if k != key}
        assert run.overrides == [f"dataset.build.{key}={json.dumps(value)}"]  # recorded in run.json


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_each_sweep_has_a_suite_that_scores_every_point_beside_the_base(name):
    from flan_builder.evaluation.suite import load_suite

    runs = load_runs(REPO / "train" / f"{name}.yaml")
    suite = load_suite(REPO / "eval" / f"{name}.yaml")
    assert suite["models"] == [runs[0].model, *(r.output for r in runs)]
    assert str(suite["data"]) == runs[0].dataset_path
    assert {r.build["max_eval_rows"] for r in runs} == {suite["limit"]}


def test_flan_recipes_shows_a_sweeps_points(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    clusters = next(line for line in lines if line.split()[:1] == ["ablation-clusters-nli"])
    assert "sweep of 4 runs, holds out nli (drops paraphrase from training too): smollm2-135m, lora, " \
           "300 steps each -> runs/ablation-clusters-nli-{c1,c2,c4,all}" in clusters


def _sweep_file(tmp_path: Path, sweep, **base) -> Path:
    data = {"model": "smollm2-135m", "heldout": "nli", "output": str(tmp_path / "runs" / "s"),
            "dataset": {"path": str(tmp_path / "build" / "s"), "build": {"data_dir": None}},
            "sweep": sweep, **base}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("sweep", "message"), [
    ([], "sweep must be a non-empty list of points"),
    ({"a": 1}, "sweep must be a non-empty list of points"),
    (["x"], "sweep point #1 must be a mapping with name and set"),
    ([{"name": "a", "sett": {}}], "sweep point #1: unknown key(s) sett"),
    ([{"name": "a b"}], "sweep point #1: name must be a short word"),
    ([{"name": "a"}, {"name": "a"}], "sweep point #2: name 'a' is used twice"),
    ([{"name": "a", "set": ["x"]}], "sweep point #1 (a): set must map recipe keys"),
    ([{"name": "a", "set": {"sweep": []}}], "a point cannot set the sweep itself"),
    ([{"name": "a", "set": {"peft.rank": 4}}], "(point a): unknown key 'peft.rank'"),
    ([{"name": "a", "set": {"dataset.build.prompt_style": "raw"}}],
     "dataset.build.prompt_style must be one of instructions, no_template, dataset_name"),
    ([{"name": "a", "set": {"dataset.build.prompt_style": "no_template", "dataset.build.max_templates": 2}}],
     "prompt_style no_template renders each row once, without templates"),
])
def test_bad_sweeps_name_the_point_and_key(tmp_path, sweep, message):
    with pytest.raises(FlanError) as info:
        load_runs(_sweep_file(tmp_path, sweep))
    assert message in str(info.value)


def test_points_overrides_and_their_conflicts(tmp_path):
    path = _sweep_file(tmp_path, [{"name": "a", "set": {"sft.seed": 1}},
                                  {"name": "b", "set": {"sft.seed": 2, "dataset.path": str(tmp_path / "d")}}])
    a, b = load_runs(path, ["sft.learning_rate=1e-3", "output=" + str(tmp_path / "other")])
    assert a.sft["learning_rate"] == b.sft["learning_rate"] == 1e-3  # a command-line --set: every point
    assert (a.output, b.output) == (str(tmp_path / "other-a"), str(tmp_path / "other-b"))  # each suffixed
    assert a.dataset_path == str(tmp_path / "build" / "s-a")
    assert b.dataset_path == str(tmp_path / "d")  # a point that sets its dataset path keeps it
    assert (a.sft["seed"], b.sft["seed"]) == (1, 2)
    assert [r.name for r in load_runs(path, point="b")] == ["sweep-b"]
    with pytest.raises(FlanError, match="--point c: .* has no such point; its points: a, b"):
        load_runs(path, point="c")
    with pytest.raises(FlanError, match="--set sft.seed: .* sets sft.seed per sweep point"):
        load_runs(path, ["sft.seed=3"])
    with pytest.raises(FlanError, match="heldout-nli.yaml is not a sweep"):
        load_runs(REPO / "train" / "heldout-nli.yaml", point="a")


# -- flan train --check on the shipped sweeps --------------------------------------------------------

def test_check_resolves_every_point_of_a_shipped_sweep(capsys):
    pytest.importorskip("trl")
    from flan_builder.training.job import native_bf16

    code = main(["train", "ablation-prompt-style-nli", "--check"])
    lines = capsys.readouterr().out.splitlines()
    precision = "bf16" if native_bf16() else "fp32"  # the shipped recipes' precision: auto
    assert code == 0 and len(lines) == 3
    for line, point in zip(lines, ("instructions", "no_template", "dataset_name"), strict=True):
        assert line.startswith(f"ablation-prompt-style-nli-{point}: ok (smollm2-135m")
        assert line.endswith(f"held out nli, lora, 300 steps, {precision} -> "
                             f"runs/ablation-prompt-style-nli-{point})")
    code = main(["train", "ablation-clusters-nli", "--point", "c2", "--check"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ablation-clusters-nli-c2: ok") and out.count("\n") == 1


def test_check_applies_the_held_out_rules_to_each_points_build(tmp_path, capsys):
    pytest.importorskip("trl")
    path = _sweep_file(tmp_path, [{"name": "ok", "set": {"dataset.build.num_train_clusters": 2}},
                                  {"name": "many", "set": {"dataset.build.num_train_clusters": 40}}])
    code = main(["train", str(path), "--check"])
    captured = capsys.readouterr()
    assert captured.out.startswith("sweep-ok: ok")
    assert_one_line_error(code, captured.err, "--num-train-clusters 40: holding out nli", "clusters train",
                          "coreference", "give 1 to")
    path = _sweep_file(tmp_path, [{"name": "x", "set": {"dataset.build.train_clusters": ["sentimnt"]}}])
    code = main(["train", str(path), "--check"])
    assert_one_line_error(code, capsys.readouterr().err, "unknown cluster 'sentimnt'")
    code = main(["train", "ablation-clusters-nli", "--point", "c9", "--check"])
    assert_one_line_error(code, capsys.readouterr().err, "--point c9", "its points: c1, c2, c4, all")


# -- a sweep trains point by point, builds each point's data, and resumes --------------------------------

def test_a_sweep_builds_and_trains_each_point_and_skips_finished_ones(tmp_path, tiny_model_dir, monkeypatch,
                                                                    capsys):
    pytest.importorskip("trl")
    monkeypatch.setenv("FLAN_TEMPLATES_DIR", str(FIXTURE_TEMPLATES))
    base = yaml.safe_load(make_recipe(tmp_path, tiny_model_dir, tmp_path / "unused").read_text())
    base["sft"]["max_steps"] = 2
    base["output"] = str(tmp_path / "runs" / "style")
    base["dataset"] = {"path": str(tmp_path / "build" / "style"),
                       "build": {"data_dir": str(FIXTURE_DATA), "max_eval_rows": 4}}
    base["sweep"] = [{"name": "instructions"},
                     {"name": "no_template", "set": {"dataset.build.prompt_style": "no_template"}}]
    path = tmp_path / "style.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")

    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "style-instructions: training ->" in out and "style-no_template: training ->" in out
    manifests = {p: json.loads((tmp_path / "build" / f"style-{p}" / "manifest.json").read_text())
                 for p in ("instructions", "no_template")}
    assert manifests["no_template"]["config"]["prompt_style"] == "no_template"
    assert manifests["instructions"]["config"]["prompt_style"] == "instructions"
    hashes = {p: m["content_hash"]["heldout"] for p, m in manifests.items()}
    assert hashes["no_template"] == hashes["instructions"]  # held-out rows: the same prompts
    run = json.loads((tmp_path / "runs" / "style-no_template" / "run.json").read_text())
    assert run["recipe"]["name"] == "style-no_template"
    assert run["recipe"]["dataset"]["build"]["prompt_style"] == "no_template"
    assert run["recipe"]["overrides"] == ['dataset.build.prompt_style="no_template"']
    stamp = (tmp_path / "runs" / "style-instructions" / "run.json").stat().st_mtime_ns

    assert main(["train", str(path)]) == 0  # run again: both finished, nothing trains
    out = capsys.readouterr().out
    assert "style-instructions: already trained" in out and "style-no_template: already trained" in out
    assert (tmp_path / "runs" / "style-instructions" / "run.json").stat().st_mtime_ns == stamp

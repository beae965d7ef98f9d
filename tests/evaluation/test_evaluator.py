"""`flan eval`: base vs tuned on the same held-out rows, report files, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    REPO,
    SHARED_DATA,
    make_recipe,
    requires_shared_data,
    train_recipe,
)

pytest.importorskip("torch")
pytest.importorskip("evaluate")


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model_dir, toy_build):
    return train_recipe(make_recipe(tmp_path_factory.mktemp("run"), tiny_model_dir, toy_build)).out


def _config(tmp_path, models, data, **kwargs):
    from flan_builder.evaluation.evaluator import EvalConfig

    return EvalConfig(models=[str(m) for m in models], data=data, out=tmp_path / "report", **kwargs)


def test_base_and_tuned_on_the_same_rows_with_a_report(tmp_path, tiny_model_dir, tuned_run,
                                                       toy_build):
    from flan_builder.evaluation.evaluator import evaluate_models

    results = evaluate_models(_config(tmp_path, [tiny_model_dir, tuned_run], toy_build,
                                      options=(True, False)))
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "report.png"}
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    records = results["records"]
    by_model = {}
    for r in records:
        by_model.setdefault(r["model"], set()).add((r["task"], r["template"], r["options"], r["scores"]["n"]))
    assert by_model[str(tiny_model_dir)] == by_model[str(tuned_run)]  # exactly the same rows
    built = json.loads((toy_build / "manifest.json").read_text())
    heldout_templates = {t for t in built["split_plan"]["heldout_tasks"]}
    assert {r["task"] for r in records} == heldout_templates
    for d in results["datasets"]:
        assert d["worst"] <= d["median"] <= d["best"] and 0 <= d["mean"] <= 100
    md = (out / "report.md").read_text()
    assert "Δ" in md and "mean of datasets" in md
    assert not (tmp_path / ".report.partial").exists()
    # acc_norm beside acc: one column per model, its mean over templates on every dataset's line
    header = next(line for line in md.splitlines() if line.startswith("| dataset"))
    assert header.count("| acc_norm |") == 2
    for d in results["datasets"]:
        start = f"| {d['task']} | {'yes' if d['options'] else 'no'} |"
        line = next(line for line in md.splitlines() if line.startswith(start))
        assert f"| {d['acc_norm_mean']:.1f} |" in line
    assert results["separator"] == "\n\n" and all(r["separator"] == "\n\n" for r in records)


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path, tiny_model_dir, toy_build,
                                                            monkeypatch):
    from flan_builder.evaluation import evaluator as run

    calls = []
    original = run.score_classification

    def failing_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "score_classification", failing_after_two)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build))
    assert not (tmp_path / "report").exists()
    partial = tmp_path / ".report.partial" / "results.jsonl"
    assert len(partial.read_text().splitlines()) == 2
    counted = []
    monkeypatch.setattr(run, "score_classification",
                        lambda *a, **k: counted.append(1) or original(*a, **k))
    results = run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build))
    assert len(results["records"]) == len(counted) + 2


def test_log_samples_writes_every_rows_scores_and_predictions(tmp_path, tiny_model_dir, toy_build, capsys):
    """--log-samples: one JSON line per row in samples/<model>/<task>/<template>.jsonl, with what
    decided each prediction; they add up to the reported acc and acc_norm."""
    from datasets import load_from_disk

    from flan_builder.cli import main

    out = tmp_path / "logged"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(toy_build), "--out", str(out),
                 "--separator", " ", "--log-samples", "--options", "both"]) == 0
    printed = capsys.readouterr().out
    assert "| acc_norm |" in printed.splitlines()[0]
    results = json.loads((out / "results.json").read_text())
    assert results["separator"] == " " and results["log_samples"] is True
    rows = {(r["task"], r["template_id"], r["source_index"]): r
            for r in load_from_disk(str(toy_build))["heldout"] if not r["inverted"]}
    model = str(tiny_model_dir)
    for record in results["records"]:
        path = out / record["samples"]
        suffix = "" if record["options"] else ".no-options"
        assert record["samples"] == f"samples/{tiny_model_dir.name}/{record['task']}/{record['template']}" \
                                    f"{suffix}.jsonl"
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(lines) == record["scores"]["n"]
        for sample in lines:
            assert (sample["model"], sample["task"], sample["template"], sample["with_options"]) == \
                (model, record["task"], record["template"], record["options"])
            row = rows[(record["task"], record["template"], sample["source_index"])]
            assert sample["prompt"] == (row["prompt"] if record["options"] else row["input"])
            assert sample["separator"] == " " and sample["gold"] == row["answer_index"]
            assert [o["option"] for o in sample["options"]] == row["options"]
            logprobs = [o["logprob"] for o in sample["options"]]
            per_char = [o["logprob"] / o["chars"] for o in sample["options"]]
            assert sample["pred"] == logprobs.index(max(logprobs))
            assert sample["pred_norm"] == per_char.index(max(per_char))
            for option in sample["options"]:
                assert option["chars"] == len(option["option"]) and option["logprob"] < 0
                # " " merges into the option's first token, so the scored text is " " + option
                assert option["tokens"] == len(option["scored_tokens"]) >= 1
                assert "".join(option["scored_tokens"]) == " " + option["option"]
        for key in ("acc", "acc_norm"):
            assert record["scores"][key] == pytest.approx(100 * sum(s[key] for s in lines) / len(lines))
    assert not list(tmp_path.glob(".logged*"))


def test_a_resumed_evaluation_redoes_what_another_separator_or_missing_samples_left(
        tmp_path, tiny_model_dir, toy_build, monkeypatch):
    from flan_builder.evaluation import evaluator as run

    original = run.score_classification
    calls = []

    def failing_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "score_classification", failing_after_two)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build))  # "\n\n", no samples
    counted = []
    monkeypatch.setattr(run, "score_classification", lambda *a, **k: counted.append(1) or original(*a, **k))
    results = run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build, separator=" ",
                                          log_samples=True))
    assert len(counted) == len(results["records"])  # nothing reused from the "\n\n" run
    assert all((tmp_path / "report" / r["samples"]).is_file() and r["separator"] == " "
               for r in results["records"])
    # the same separator, now asking for samples: groups logged without them are redone
    calls.clear()
    monkeypatch.setattr(run, "score_classification", failing_after_two)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build, overwrite=True))
    counted.clear()
    monkeypatch.setattr(run, "score_classification", lambda *a, **k: counted.append(1) or original(*a, **k))
    again = run.evaluate_models(_config(tmp_path, [tiny_model_dir], toy_build, log_samples=True,
                                        overwrite=True))
    assert len(counted) == len(again["records"]) and again["separator"] == "\n\n"


def test_bad_separator_escape_is_one_line(tmp_path, tiny_model_dir, toy_build):
    done = _cli(["--model", str(tiny_model_dir), "--data", str(toy_build), "--out", str(tmp_path / "r"),
                 "--separator", "\\x4"])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "--separator" in lines[0], done.stderr[-1500:]


def _cli(args):
    return subprocess.run([sys.executable, "-m", "flan_builder.cli", "eval", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                           "TQDM_DISABLE": "1"})


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_model_dir, toy_build):
    from flan_builder.build import BuildConfig, build
    from flan_builder.specs import load_registry

    no_heldout = tmp_path / "none"
    build(BuildConfig(heldout="none", out=no_heldout, data_dir=FIXTURE_DATA,
                      templates_dir=FIXTURE_TEMPLATES), registry=load_registry(FIXTURE_TEMPLATES))
    base = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "r")]
    cases = [
        (["--model", str(tiny_model_dir), "--data", str(no_heldout), "--out", str(tmp_path / "r")],
         "no held-out split"),
        (["--model", "no-such-model", "--data", str(toy_build), "--out", str(tmp_path / "r")], "not found"),
        ([*base, "--data", str(toy_build), "--template", "zzz"], "no held-out rows match"),
        ([*base, "--data", str(toy_build), "--limit", "0"], "--limit must be at least 1"),
        ([*base, "--data", str(tmp_path / "missing")], "dataset directory"),
    ]
    for args, message in cases:
        done = _cli(args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (args, done.stderr[-1500:])
        assert len(lines) == 1 and message in lines[0], (args, done.stderr[-1500:])


def test_generation_rows_are_decoded_and_scored_with_the_shipped_metric(tmp_path, tiny_model_dir):
    from flan_builder.build import BuildConfig, build
    from flan_builder.evaluation.evaluator import evaluate_models
    from flan_builder.specs import load_registry

    data = tmp_path / "qa"
    build(BuildConfig(heldout="qa", out=data, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES),
          registry=load_registry(FIXTURE_TEMPLATES))
    results = evaluate_models(_config(tmp_path, [tiny_model_dir], data, templates=2, limit=3,
                                      batch_size=2, log_samples=True))
    assert results["records"] and all(r["metric"] == "exact_match" for r in results["records"])
    for record in results["records"]:
        assert set(record["scores"]) >= {"exact_match", "f1", "n"} and 1 <= record["scores"]["n"] <= 3
        samples = [json.loads(line) for line in
                   (tmp_path / "report" / record["samples"]).read_text(encoding="utf-8").splitlines()]
        assert len(samples) == record["scores"]["n"]
        assert [s["answer"] for s in samples][:3] == record["scores"]["examples"]
        assert all(s["references"] and s["prompt"] for s in samples)


@pytest.mark.parametrize(("module", "predictions", "references", "expected"), [
    ("flan_qa", ["The Cat!", "dog"], [["cat"], ["a wolf", "dog"]], {"exact_match": 100.0, "f1": 100.0}),
    ("flan_qa", ["red cat"], [["cat"]], {"exact_match": 0.0, "f1": 100 * 2 / 3}),
    ("flan_rouge", ["the cat sat"], [["the cat sat"]], {"rougeL": 100.0}),
    ("flan_sacrebleu", ["the cat sat on the mat"], [["the cat sat on the mat"]],
     {"bleu": 100.0, "chrf": 100.0}),
    # 'no idea' has no number: scored as the references' mean (250 / 3), and counted
    ("flan_regression", ["151 points", "no idea", "-3"], [["150"], ["100"], ["0"]],
     {"rmse": ((1 + (250 / 3 - 100) ** 2 + 9) / 3) ** 0.5, "mae": (1 + (100 - 250 / 3) + 3) / 3,
      "unparsable": 1}),
])
def test_shipped_metric_modules_load_offline_by_path(module, predictions, references, expected):
    import evaluate

    from flan_builder.evaluation.metrics import metric

    result = evaluate.load(str(metric(module).path)).compute(predictions=predictions, references=references)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("method", ["prompt_tuning", "ia3"])
def test_adapters_of_other_methods_load_onto_their_base_from_the_run_manifest(
        tmp_path, tiny_model_dir, toy_build, method):
    from flan_builder.evaluation.evaluator import evaluate_models
    from flan_builder.lm.hf import load_for_eval

    run_dir = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, peft={"method": method})).out
    model, _, info = load_for_eval(str(run_dir))
    assert info["kind"] == "adapter" and info["method"] == method
    # virtual-token adapters stay PEFT models (scored by full sequences); IA3 is merged
    assert hasattr(model, "peft_config") == (method == "prompt_tuning")
    results = evaluate_models(_config(tmp_path, [tiny_model_dir, run_dir], toy_build, limit=4,
                                      templates=2))
    assert {r["model"] for r in results["records"]} == {str(tiny_model_dir), str(run_dir)}


def test_tabular_regression_is_scored_by_rmse_and_kept_out_of_the_cluster_mean(tiny_model_dir, registry):
    from flan_builder.evaluation.aggregate import aggregate
    from flan_builder.evaluation.scorers import score_generation
    from flan_builder.lm.hf import HFLM

    lm = HFLM.load(str(tiny_model_dir), batch_size=2)
    rows = [{"prompt": f"age is {40 + i}, bmi is 2{i}.1. Progression?", "input": f"age is {40 + i}.",
             "references": [str(100 + 10 * i)], "target": str(100 + 10 * i)} for i in range(4)]
    # how diabetes is scored comes from its spec (metric: flan_regression), not a guess from the rows
    diabetes_eval = registry.evaluation(registry.task("diabetes")).to_json()
    scores = score_generation(lm, rows, diabetes_eval, True, from_hub=True)  # local only: no Hub module
    assert set(scores) == {"rmse", "mae", "unparsable", "n", "examples"} and scores["n"] == 4
    assert scores["rmse"] >= scores["mae"] >= 0 and 0 <= scores["unparsable"] <= 4
    # the same rows scored as a QA task (a number can be a short answer) use its cluster's metric
    qa_eval = registry.evaluation(registry.task("nq_open")).to_json()
    assert "exact_match" in score_generation(lm, rows, qa_eval, True, False)

    def record(task, template, metric, value):
        return {"model": "m", "options": True, "task": task, "cluster": "tabular", "template": template,
                "metric": metric, "scores": {metric: value, "acc_norm": value}}

    summary = aggregate([record("diabetes", "t1", "rmse", 60.0), record("diabetes", "t2", "rmse", 80.0),
                         record("iris", "t1", "acc", 50.0), record("iris", "t2", "acc", 70.0)])
    diabetes = next(d for d in summary["datasets"] if d["task"] == "diabetes")
    assert (diabetes["best"], diabetes["worst"], diabetes["best_template"]) == (60.0, 80.0, "t1")
    assert summary["clusters"] == [{"model": "m", "options": True, "cluster": "tabular", "mean": 60.0,
                                    "datasets": 1, "acc_norm_mean": 60.0}]  # iris alone: RMSE is not
    # averaged with accuracy


def test_every_shipped_suite_replays_its_training_recipe():
    """eval/<name>.yaml evaluates what train/<name>.yaml builds and trains, beside the untuned base."""
    import yaml

    from flan_builder.evaluation.suite import load_suite

    suites = sorted((REPO / "eval").glob("heldout-*.yaml"))  # ablation-*: tests/training/test_sweep.py
    assert len(suites) == len(list((REPO / "train").glob("heldout-*.yaml"))) == 11
    for path in suites:
        suite = load_suite(path)
        recipe = yaml.safe_load((REPO / "train" / path.name).read_text(encoding="utf-8"))
        assert str(suite["data"]) == recipe["dataset"]["path"]
        assert suite["models"] == [recipe["model"], recipe["output"]]


def test_a_suite_runs_and_flags_override_it(tmp_path, tiny_model_dir, toy_build):
    from flan_builder.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"data: {toy_build}\nout: {tmp_path / 'from-suite'}\nmodels: [{tiny_model_dir}]\n"
                     "limit: 2\ntemplates: 1\noptions: both\n", encoding="utf-8")
    assert main(["eval", str(suite), "--limit", "3", "--out", str(tmp_path / "flags")]) == 0
    results = json.loads((tmp_path / "flags" / "results.json").read_text())
    assert not (tmp_path / "from-suite").exists()
    assert {r["scores"]["n"] for r in results["records"]} == {3}  # --limit won over limit: 2
    assert {r["options"] for r in results["records"]} == {True, False}  # the suite's options: both
    assert results["suite"] == str(suite)
    suite.write_text("models: [x]\nshots: -1\n", encoding="utf-8")
    bad = _cli([str(suite), "--data", str(toy_build), "--out", str(tmp_path / "r")])
    assert bad.returncode == 2 and "--shots -1: give 0" in bad.stderr
    suite.write_text("modles: [x]\n", encoding="utf-8")
    bad = _cli([str(suite)])
    assert bad.returncode == 2 and "unknown key(s) modles" in bad.stderr


def test_proxy_tuned_rows_and_gap_closed_in_the_report(tmp_path, tiny_model_dir, tuned_run, toy_build):
    """Steering the untuned base by (tuned - untuned) at alpha 1 is the tuned model: 100% of the gap."""
    from flan_builder.cli import main

    out = tmp_path / "proxy"
    assert main(["eval", "--model", str(tiny_model_dir), "--expert", str(tuned_run), "--anti",
                 str(tiny_model_dir), "--direct", str(tuned_run), "--data", str(toy_build), "--out", str(out),
                 "--limit", "6", "--templates", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    assert names[0] == str(tiny_model_dir) and names[1] == str(tuned_run) and names[2].startswith("proxy[")
    proxy, direct = names[2], str(tuned_run)
    by = {(d["model"], d["task"]): d["mean"] for d in results["datasets"]}
    for (model, task), mean in by.items():
        if model == proxy:
            assert mean == pytest.approx(by[(direct, task)], abs=1e-9)
    gaps = results["gap_closed"]
    assert {g["level"] for g in gaps} == {"template", "dataset", "cluster"}
    assert len([g for g in gaps if g["level"] == "template"]) == len({(r["task"], r["template"], r["options"])
                                                                      for r in results["records"]})
    for g in gaps:
        assert g["gap_closed_pct"] is None if g["direct_score"] == g["base_score"] else \
            g["gap_closed_pct"] == pytest.approx(100.0)
    assert "% gap closed" in (out / "report.md").read_text()


def test_a_resumed_evaluation_keeps_each_models_provenance_and_the_total_wall_time(
        tmp_path, tiny_model_dir, toy_build, monkeypatch):
    import shutil
    import time

    from flan_builder.evaluation import evaluator as run

    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin)
    original = run.score_classification

    def stop_at_the_second_model(lm, *args, **kwargs):
        if lm.info["name"] == str(twin):
            raise KeyboardInterrupt
        return original(lm, *args, **kwargs)

    monkeypatch.setattr(run, "score_classification", stop_at_the_second_model)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models(_config(tmp_path, [tiny_model_dir, twin], toy_build))
    first_session = time.perf_counter() - started
    monkeypatch.setattr(run, "score_classification", original)
    resumed = run.evaluate_models(_config(tmp_path, [tiny_model_dir, twin], toy_build))
    whole = run.evaluate_models(_config(tmp_path / "again", [tiny_model_dir, twin], toy_build))
    # the first model was not loaded again, yet its provenance is the one an uninterrupted run records
    assert resumed["models"] == whole["models"]
    assert resumed["models"][0]["kind"] == "local" and resumed["models"][0]["source"]
    assert resumed["sessions"] == 2 and whole["sessions"] == 1
    assert resumed["wall_time_s"] >= 0.9 * first_session


@requires_shared_data
def test_limit_takes_a_sample_of_rows_not_the_sources_label_sorted_head(tmp_path):
    """rotten_tomatoes' validation split lists its 533 positive reviews first: `--limit 20` must
    still see both labels, the same source rows under every template, and a larger limit keeps
    the smaller one's rows."""
    from flan_builder.build import BuildConfig, build
    from flan_builder.evaluation.rows import load_heldout

    out = tmp_path / "sentiment"
    build(BuildConfig(heldout="sentiment", out=out, data_dir=SHARED_DATA, max_eval_rows=200, eval_only=True))
    small, _ = load_heldout(out, tasks=["rotten_tomatoes"], limit=20)
    large, _ = load_heldout(out, tasks=["rotten_tomatoes"], limit=60)
    everything, _ = load_heldout(out, tasks=["rotten_tomatoes"])
    first = [r["source_index"] for r in everything[next(iter(everything))]][:20]
    assert len({r["target"] for r in everything[next(iter(everything))] if r["source_index"] in first}) == 1
    rows_by_template = {key: [r["source_index"] for r in rows] for key, rows in small.items()}
    assert len(rows_by_template) == 10 and all(len(v) == 20 for v in rows_by_template.values())
    assert len({tuple(v) for v in rows_by_template.values()}) == 1  # the same rows for every template
    chosen = next(iter(rows_by_template.values()))
    assert chosen == sorted(chosen)  # kept in source order
    assert all(len({r["target"] for r in rows}) == 2 for rows in small.values())  # both labels
    assert set(chosen) <= {r["source_index"] for r in large[next(iter(large))]}

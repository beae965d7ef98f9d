"""LIFT: tables as text through the builder, trainer and evaluator, beside scikit-learn baselines."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from tests.helpers import TEMPLATES, assert_one_line_error

pytest.importorskip("sklearn")


# -- serialisation --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (0.0012, "0.0012"),  # a fixed %.2f would write 0.00
    (0.07871, "0.07871"),
    (5.1, "5.1"),
    (1001.0, "1001"),
    (123456.7, "123457"),  # never fewer than the integer digits
    (-0.5, "-0.5"),
    (0.000123456, "0.0001235"),
    (1e-9, "0.000000001"),  # no exponent
    (0.1 + 0.2, "0.3"),
    (3, "3"),
    (0.0, "0"),
])
def test_number_rule_keeps_small_scale_features(value, text):
    from flan_builder.sources.serialise import format_number

    assert format_number(value) == text


def test_number_rule_digits_setting():
    from flan_builder.sources.serialise import format_number

    assert format_number(3.14159, digits=2) == "3.1"
    assert format_number(3.14159, digits=6) == "3.14159"


def test_feature_name_modes():
    from flan_builder.sources.serialise import feature_names
    from flan_builder.sources.tables import load_sklearn

    names = load_sklearn("wine").feature_names
    assert feature_names(names, "names") == names
    assert feature_names(names, "generic") == [f"x{i}" for i in range(1, 14)]
    shuffled = feature_names(names, "shuffled", seed=0)
    assert sorted(shuffled) == sorted(names)  # the real names, permuted ...
    assert all(a != b for a, b in zip(shuffled, names, strict=True))  # ... none left in place
    assert feature_names(names, "shuffled", seed=0) == shuffled  # fixed by the seed
    assert feature_names(names, "shuffled", seed=1) != shuffled
    with pytest.raises(FlanError, match="names, generic, shuffled"):
        feature_names(names, "random")


def test_every_table_renders_with_ten_templates(registry):
    from flan_builder.sources import load_split
    from flan_builder.templating import TaskRenderer

    tabular = registry.in_cluster("tabular")
    assert sorted(s.name for s in tabular) == ["breast_cancer", "diabetes", "digits", "iris", "wine"]
    for spec in tabular:
        assert registry.is_opt_in(spec) and len(spec.templates) >= 10
        rows = load_split(spec, "eval", None)
        renderer = TaskRenderer(spec)
        examples = renderer.render_all(rows.all()[0], list(range(len(spec.templates))))
        prompts = {e.prompt for e in examples}
        assert len(prompts) == len(spec.templates), spec.name  # ten different phrasings
        first = rows.all()[0]["features"]
        for example in examples:  # every feature's name and value is in every phrasing
            assert all(f["name"] in example.input and f["value"] in example.input for f in first)
            assert spec.constants["question"][1:] in example.input
        if spec.type == "classification":
            assert examples[0].prompt.endswith("\n- ".join(["OPTIONS:", *spec.options]))
            assert examples[0].target == spec.options[rows.all()[0]["label"]]
        else:
            assert examples[0].target == rows.all()[0]["target_text"]
            assert float(examples[0].target) == rows.all()[0]["target"]


def test_iris_row_reads_like_lift():
    from flan_builder.specs import load_registry
    from flan_builder.templating import TaskRenderer

    spec = load_registry(TEMPLATES).task("iris")
    row = {"features": [{"name": "sepal length (cm)", "value": "5.1"},
                        {"name": "petal width (cm)", "value": "0.2"}], "label": 0}
    example = TaskRenderer(spec, with_options=False).render(row, 0)
    assert example.prompt == "sepal length (cm) is 5.1, petal width (cm) is 0.2. What is the type of iris?"
    assert example.target == "setosa"


# -- splits and baselines -------------------------------------------------------------------------

def test_stratified_seeded_split():
    from flan_builder.sources.tables import load_sklearn, split_indices

    table = load_sklearn("wine")
    train, test = split_indices(table, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(table.rows) == 178
    assert len(test) == 36
    whole = Counter(table.target)
    in_test = Counter(table.target[i] for i in test)
    for label, count in whole.items():  # each class keeps its share, to within one row
        assert abs(in_test[label] - count * 0.2) <= 1
    assert split_indices(table, seed=0) == (train, test)
    assert split_indices(table, seed=1)[1] != test


def test_baselines_on_the_same_split():
    from flan_builder.lift.baselines import CLASSIFIERS, REGRESSORS, fit_baselines
    from flan_builder.sources.tables import load_sklearn, split_indices

    iris = load_sklearn("iris")
    scores = fit_baselines(iris, *split_indices(iris, 0), seed=0)
    assert list(scores) == list(CLASSIFIERS)
    assert scores["majority"]["accuracy"] == pytest.approx(100 / 3)  # stratified: 10 of each class
    assert scores["logistic_regression"]["accuracy"] >= 90
    diabetes = load_sklearn("diabetes")
    scores = fit_baselines(diabetes, *split_indices(diabetes, 0), seed=0)
    assert list(scores) == list(REGRESSORS)
    assert scores["mean"]["rae"] == pytest.approx(1.0)  # RAE is relative to the training mean
    assert scores["linear_regression"]["rmse"] < scores["mean"]["rmse"]


def test_regression_scores_by_hand():
    from flan_builder.lift.baselines import regression_scores

    scores = regression_scores([1.0, 3.0], [2.0, 5.0], train_mean=2.0)
    assert scores["rmse"] == pytest.approx(((1 + 4) / 2) ** 0.5)
    assert scores["rae"] == pytest.approx((1 + 2) / (1 + 1))
    assert scores["mae"] == pytest.approx((1 + 2) / 2)


def test_one_rule_for_unparsable_answers():
    """Counted, and scored as the given constant guess (flan lift: the training mean)."""
    from flan_builder.evaluation.numbers import score_numbers

    scores = score_numbers([10.0, 20.0], ["about 12", "no idea"], fallback=14.0)
    assert scores["unparsable"] == 1
    assert scores["mae"] == pytest.approx((2 + 6) / 2)
    assert scores["rae"] == pytest.approx((2 + 6) / (4 + 6))  # against always guessing 14
    # without a fallback: the references' mean (flan eval's metric module)
    assert score_numbers([10.0, 20.0], ["x", "20"])["mae"] == pytest.approx(5 / 2)


def test_the_old_task_flag_names_its_new_name(capsys):
    from flan_builder.cli import main

    code = main(["lift", "--csv", "x.csv", "--target", "y", "--task", "regression", "--out", "/tmp/never"])
    assert_one_line_error(code, capsys.readouterr().err, "--task was renamed --kind", "--kind regression")


@pytest.mark.parametrize(("text", "value"), [
    ("151", 151.0), (" 151.5 points", 151.5), ("about -3", -3.0), ("1,234", 1234.0),
    ("setosa", None), ("", None),
])
def test_parse_number(text, value):
    from flan_builder.evaluation.numbers import parse_number

    assert parse_number(text) == value


# -- tables from files, and their errors -----------------------------------------------------------

def _write_csv(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """A hand-made table: two numbers, a colour, a size class and a price."""
    rng = random.Random(seed)
    lines = ["width,height,colour,size,price"]
    for _ in range(rows):
        width, height = rng.uniform(0, 10), rng.uniform(0, 0.01)
        colour = rng.choice(["red", "blue"])
        size = "big" if width > 5 else "small"
        lines.append(f"{width:.3f},{height:.5f},{colour},{size},{10 * width + rng.uniform(0, 1):.2f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_table_kinds_and_classes(tmp_path):
    from flan_builder.sources.tables import load_file

    path = _write_csv(tmp_path / "shop.csv")
    table = load_file(path, "size")
    assert table.kind == "classification" and table.classes == ["big", "small"]
    assert table.feature_names == ["width", "height", "colour", "price"]
    assert isinstance(table.rows[0][0], float) and table.rows[0][2] in ("red", "blue")
    price = load_file(path, "price")
    assert price.kind == "regression" and isinstance(price.target[0], float)
    import pandas as pd  # the same table as parquet reads the same

    pd.read_csv(path).to_parquet(tmp_path / "shop.parquet")
    parquet = load_file(tmp_path / "shop.parquet", "size")
    assert parquet.classes == table.classes and parquet.target == table.target
    assert parquet.rows == table.rows


@pytest.mark.parametrize(("content", "args", "parts"), [
    ("width,size\n1,big\n2,small\n", ["--target", "price"],
     ["no target column 'price'", "columns: width, size"]),
    ("width,size\n1,big\n2,small\n3,big\n4,small\n5,big\n6,small\n", ["--target", "size", "--kind",
                                                                      "regression"],
     ["'big'", "not a number", "regression needs numeric targets"]),
    ("width,size\n" + "".join(f"{i},big\n{i},small\n" for i in range(5)) + "9,tiny\n",
     ["--target", "size"], ["class 'tiny' has 1 row", "at least 2 rows per class"]),
    ("width,size\n" + "".join(f"{i},big\n" for i in range(6)),
     ["--target", "size", "--kind", "classification"],
     ["column 'size' has only one class ('big' in all 6 rows)", "at least two"]),
    ("", ["--target", "size"], ["is empty"]),
    ("width,size\n", ["--target", "size"], ["no data rows"]),
])
def test_bad_tables_are_one_line_errors(tmp_path, capsys, content, args, parts):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    code = main(["lift", "--csv", str(path), *args, "--out", str(tmp_path / "out"), "--seeds", "0"])
    assert_one_line_error(code, capsys.readouterr().err, *parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # nothing left behind


def test_bad_lift_arguments(tmp_path, capsys):
    code = main(["lift", "--dataset", "irises", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "unknown task 'irises'")
    code = main(["lift", "--dataset", "super_glue_rte", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "not a tabular task", "iris")
    code = main(["lift", "--dataset", "iris", "--names", "names,random", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "--names takes names, generic, shuffled")
    code = main(["lift", "--csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "needs --target")
    code = main(["lift", "--dataset", "iris", "--templates", "0", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, "--templates must be at least 1")
    assert not (tmp_path / "o").exists()


# -- the builder's tabular cluster ---------------------------------------------------------------

def test_tabular_trains_only_when_asked(tmp_path):
    from flan_builder.build import BuildConfig, build

    plain = build(BuildConfig(heldout=None, out=tmp_path / "plain", tasks=["iris", "wine"]))
    assert plain.manifest["counts"]["train"]["per_task"] == {"iris": 120, "wine": 142}
    from flan_builder.heldout import plan_split
    from flan_builder.specs import load_registry

    registry = load_registry(TEMPLATES)
    plan = plan_split(registry, "nli")
    assert plan.excluded["iris"] == "opt-in cluster tabular; add --with tabular to train on it"
    plan = plan_split(registry, "nli", with_clusters=["tabular"])
    assert {"iris", "wine", "breast_cancer", "digits", "diabetes"} <= {s.name for s in plan.train_tasks}
    plan = plan_split(registry, "tabular")  # held out: zero-shot on tables
    assert sorted(s.name for s in plan.heldout_tasks) == ["breast_cancer", "diabetes", "digits", "iris",
                                                         "wine"]


# -- flan lift end to end on a tiny model -----------------------------------------------------------

QUICK = ["--set", "sft.num_train_epochs=1", "--set", "sft.logging_steps=1"]


def test_lift_csv_classification_end_to_end(tmp_path, capsys, tiny_model_dir):
    path = _write_csv(tmp_path / "shop.csv")
    out = tmp_path / "report"
    code = main(["lift", "--csv", str(path), "--target", "size", "--model", str(tiny_model_dir),
                 "--seeds", "0,1", "--templates", "2", "--names", "names,generic", "--out", str(out),
                 *QUICK])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.md").is_file() and (out / "report.png").stat().st_size > 0
    assert results["task_kind"] == "classification" and results["table"]["classes"] == ["big", "small"]
    methods = {(line["method"], line["names"]) for line in results["summary"]}
    assert {("lift", "names"), ("lift", "generic"), ("base", "names"), ("base", "generic"),
            ("logistic_regression", None), ("majority", None)} <= methods
    lift = [r for r in results["records"] if r["method"] == "lift"]
    assert len(lift) == 4 and all(len(r["per_template"]) == 2 for r in lift)
    assert all(t["n"] == 12 for r in lift for t in r["per_template"].values())  # 20% of 60 rows
    baselines = [r for r in results["records"] if r["method"] == "baselines"]
    assert [r["test_rows"] for r in baselines] == [12, 12]  # the same split as the LM rows
    for line in results["summary"]:  # mean ± std over the two seeds
        assert line["accuracy"]["n"] == 2 and 0 <= line["accuracy"]["mean"] <= 100
    assert "LIFT: " in printed and "logistic regression" in printed
    # the adapters are kept, one per (names, seed), and load like any run
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["generic-seed0", "generic-seed1",
                                                                "names-seed0", "names-seed1"]
    run = json.loads((out / "runs" / "names-seed0" / "run.json").read_text())
    assert run["dataset"]["rows_trained"] == 48 and run["heldout_cluster"] == "none"
    assert not list(tmp_path.glob(".report*"))  # the work folder is gone


def test_lift_regression_counts_unparsable_answers(tmp_path, capsys, tiny_model_dir):
    path = _write_csv(tmp_path / "shop.csv")
    out = tmp_path / "price"
    code = main(["lift", "--csv", str(path), "--target", "price", "--kind", "regression",
                 "--model", str(tiny_model_dir), "--seeds", "0", "--no-base",
                 "--out", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    lift = next(line for line in results["summary"] if line["method"] == "lift")
    mean = next(line for line in results["summary"] if line["method"] == "mean")
    assert lift["answers"] == 12
    # A random tiny model writes no numbers: every answer is unparsable, kept in the denominator
    # and scored as the training mean, so LIFT's RMSE is the mean predictor's exactly.
    if lift["unparsable"] == lift["answers"]:
        assert lift["rmse"]["mean"] == pytest.approx(mean["rmse"]["mean"])
    assert "unparsable answers" in (out / "report.md").read_text()


def test_lift_resumes_without_retraining(tmp_path, tiny_model_dir, monkeypatch):
    from flan_builder.lift import experiment as lift_run
    from flan_builder.lift.experiment import LiftConfig, run_lift

    config = LiftConfig(out=tmp_path / "iris", dataset="iris", model=str(tiny_model_dir), seeds=[0],
                        overrides=QUICK[1::2])
    real_evaluate = lift_run.evaluate_rows
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the base model's evaluation: stop the run there
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(lift_run, "evaluate_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_lift(config)
    assert not config.out.exists()
    partial = tmp_path / ".iris.partial"
    logged = [json.loads(line)["method"] for line in (partial / "results.jsonl").read_text().splitlines()]
    assert logged == ["baselines", "lift"]

    import flan_builder.training.job as training_run

    def no_training(*args, **kwargs):
        raise AssertionError("the finished run was trained again")

    monkeypatch.setattr(training_run, "train", no_training)
    monkeypatch.setattr(lift_run, "evaluate_rows", real_evaluate)
    results = run_lift(config)
    assert [r["method"] for r in results["records"]] == ["baselines", "lift", "base"]
    assert results["summary"][0]["accuracy"]["n"] == 1
    assert (config.out / "results.json").is_file()


def test_lift_extend_adds_seeds_and_modes_without_retraining(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from flan_builder.lift import experiment as lift_run
    from flan_builder.lift.experiment import LiftConfig, run_lift

    out = tmp_path / "iris"
    first = run_lift(LiftConfig(out=out, dataset="iris", model=str(tiny_model_dir), seeds=[0], base=False,
                                overrides=QUICK[1::2]))
    first_lift = next(r for r in first["records"] if r["method"] == "lift")

    trained = []
    real_train = lift_run._train

    def counting_train(config, dataset, seed, run_dir, **kwargs):
        trained.append(run_dir.name)
        return real_train(config, dataset, seed, run_dir, **kwargs)

    monkeypatch.setattr(lift_run, "_train", counting_train)
    # settings that differ from the report's are refused before any work, and the report is untouched
    code = main(["lift", "--dataset", "iris", "--model", str(tiny_model_dir), "--seeds", "1", "--no-base",
                 "--digits", "3", "--extend", "--out", str(out), *QUICK])
    assert code == 2 and "digits = 4" in capsys.readouterr().err
    assert not trained and not (tmp_path / ".iris.partial").exists()

    results = run_lift(LiftConfig(out=out, dataset="iris", model=str(tiny_model_dir), seeds=[0, 1],
                                  base=False, overrides=QUICK[1::2], extend=True))
    assert trained == ["names-seed1"]  # names-seed0 is the report's
    assert results["seeds"] == [0, 1] and results["names"] == ["names"]
    kept = next(r for r in results["records"] if r["method"] == "lift" and r["names"] == "names"
                and r["seed"] == 0)
    assert kept == first_lift
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["names-seed0", "names-seed1"]
    assert next(line for line in results["summary"] if line["method"] == "lift")["accuracy"]["n"] == 2
    assert [r["seed"] for r in results["records"] if r["method"] == "baselines"] == [0, 1]
    report = (out / "report.md").read_text()
    assert "## Per seed" in report and "| seed 0 | seed 1 |" in report
    assert not list(tmp_path.glob(".iris*"))

    # a sparse addition: one more mode on one seed; every earlier row stays in the table
    trained.clear()
    results = run_lift(LiftConfig(out=out, dataset="iris", model=str(tiny_model_dir), seeds=[1],
                                  names=["shuffled"], base=False, overrides=QUICK[1::2], extend=True))
    assert trained == ["shuffled-seed1"]
    counts = {line["names"]: line["accuracy"]["n"] for line in results["summary"] if line["method"] == "lift"}
    assert counts == {"names": 2, "shuffled": 1} and results["names"] == ["names", "shuffled"]
    rows = [line for line in (out / "report.md").read_text().splitlines() if "(names: shuffled)" in line]
    assert rows[0].endswith("| 1 |") and rows[1].split("|")[2].strip() == "-"  # no seed-0 score


def test_lift_scores_a_proxy_tuned_larger_base_on_the_same_rows(tmp_path, capsys, tiny_model_dir):
    """--proxy-base: the big model untuned and steered by each seed's LoRA run; alpha 0 is the big one."""
    path = _write_csv(tmp_path / "shop.csv")
    for alpha in ("1.0", "0"):
        out = tmp_path / f"proxy-{alpha}"
        code = main(["lift", "--csv", str(path), "--target", "size", "--model", str(tiny_model_dir),
                     "--seeds", "0", "--no-base", "--proxy-base", str(tiny_model_dir), "--alpha", alpha,
                     "--out", str(out), *QUICK])
        assert code == 0, capsys.readouterr().err
        results = json.loads((out / "results.json").read_text())
        scores = {r["method"]: r["per_template"] for r in results["records"] if r["method"] != "baselines"}
        assert set(scores) == {"lift", "proxy", "proxy_base"}
        if alpha == "1.0":
            # the big model is the tuned model's own base: base + (tuned - base) is the tuned model
            assert scores["proxy"]["row_01"] == pytest.approx(scores["lift"]["row_01"])
        else:
            assert scores["proxy"] == scores["proxy_base"]
        assert "proxy-tuned:" in (out / "report.md").read_text()

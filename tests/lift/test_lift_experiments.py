"""LIFT's other experiments as modes of `flan lift`: synthetic functions, sample-size curves,
random initialisation, in-context LIFT, and digits (images as numbers)."""

from __future__ import annotations

import builtins
import json
import math
import statistics
from types import SimpleNamespace

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from tests.helpers import TEMPLATES, assert_one_line_error

pytest.importorskip("sklearn")

QUICK = ["--set", "sft.num_train_epochs=1", "--set", "sft.logging_steps=1"]
WINE_QUESTION = "Which cultivar is this wine from?"
IRIS = ("setosa", "versicolor", "virginica")


# -- synthetic functions: LIFT's families, ranges, noise and seeding ------------------------------

# Values worked out by hand from LIFT's regressionDataGen.py (each family spans about [-9, 9]).
@pytest.mark.parametrize(("name", "x", "y"), [
    ("linear", 2.0, 1.8), ("linear", -10.0, -9.0),
    ("quadratic", 0.0, -9.0), ("quadratic", 10.0, 9.0), ("quadratic", 5.0, -4.5),
    ("exponential", -10.0, -9.0), ("exponential", 10.0, 9.0),
    ("cosine", 0.0, 9.0), ("cosine", 2.0, -9.0), ("cosine", 1.0, 0.0),
    ("l1norm", 0.0, -9.0), ("l1norm", -10.0, 9.0), ("l1norm", 5.0, 0.0),
    ("piecewise", -10.0, -9.0), ("piecewise", -3.0, 0.0), ("piecewise", 2.9, 0.0), ("piecewise", 10.0, 9.0),
    ("piecewise", -5.0, 2.25),  # x + 6 = 1 below -3: not monotone
])
def test_function_families_match_lift(name, x, y):
    from flan_builder.sources.functions import target_function

    assert target_function({"name": name})([x]) == pytest.approx(y, abs=1e-9)
    # p-dimensional: the mean over coordinates, as LIFT's np.mean(..., axis=1)
    other = 3.0
    both = target_function({"name": name})([x, other])
    assert both == pytest.approx((y + target_function({"name": name})([other])) / 2, abs=1e-9)


def test_function_table_defaults_ranges_and_noise():
    from flan_builder.sources.tables import function_table

    table = function_table({"name": "quadratic"})
    assert table.kind == "regression" and table.feature_names == ["x1"]
    assert len(table.rows) == 300  # LIFT's 200 training + 100 test rows
    assert all(-10 <= row[0] <= 10 for row in table.rows)
    xs = [row[0] for row in table.rows]
    assert min(xs) < -9 and max(xs) > 9  # uniform over the whole range
    assert table.clean_target == pytest.approx([(x * x - 50) * 9 / 50 for x in xs])
    # noise: N(0, (0.1 x std of the noise-free targets)^2) on every row's training target
    residuals = [t - c for t, c in zip(table.target, table.clean_target, strict=True)]
    wanted = 0.1 * statistics.pstdev(table.clean_target)
    assert statistics.pstdev(residuals) == pytest.approx(wanted, rel=0.2)  # 300 draws: ~4% spread
    assert abs(statistics.fmean(residuals)) < 4 * wanted / math.sqrt(300)

    two = function_table({"name": "cosine", "dim": 2, "low": -2, "high": 3, "noise": 0.0, "n_train": 40,
                          "n_test": 10})
    assert two.feature_names == ["x1", "x2"] and len(two.rows) == 50
    assert all(-2 <= v <= 3 for row in two.rows for v in row)
    assert two.target == two.clean_target  # no noise asked for: none added


def test_function_tables_are_seeded():
    from flan_builder.sources.tables import function_table

    first, again = function_table({"name": "linear"}), function_table({"name": "linear"})
    assert first.rows == again.rows and first.target == again.target
    other = function_table({"name": "linear", "data_seed": 1})
    assert other.rows != first.rows and other.target != first.target
    # the same inputs for every family at one data seed; only y changes
    assert function_table({"name": "cosine"}).rows == first.rows


def test_function_test_rows_are_scored_noise_free(tmp_path):
    """Through the spec flan lift writes: training rows carry the noisy y, test rows the true one."""
    from flan_builder.lift.experiment import LiftConfig, task_spec
    from flan_builder.sources import load_split
    from flan_builder.sources.tables import function_table

    spec = task_spec(LiftConfig(out=tmp_path / "o", function="linear", function_rows=(40, 10)), tmp_path)
    assert spec.name == "function_linear_1d" and spec.type == "generation"
    table = function_table(spec.source.tabular["function"])
    train, test = load_split(spec, "train", None).all(), load_split(spec, "eval", None).all()
    assert len(train) == 40 and len(test) == 10
    noisy = {round(t, 9) for t in table.target}
    clean = {round(t, 9) for t in table.clean_target}
    assert all(round(row["target"], 9) in clean for row in test)
    assert all(round(row["target"], 9) in noisy - clean for row in train)
    assert test[0]["features"][0]["name"] == "x1"


# -- the expression parser ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "point", "value"), [
    ("x1 ** 2 + sin(x2)", (1.5, 0.0), 2.25),
    ("-x1 / 2 + pi", (2.0, 0.0), math.pi - 1),
    ("max(x1, x2, 0) - min(x1, x2)", (-1.0, 3.0), 4.0),
    ("abs(x1) % 3 + 2 ** -3", (-7.0, 0.0), 1.125),
    ("exp(log(x2)) * e / e", (0.0, 5.0), 5.0),
    ("hypot(x1, x2) + floor(2.7)", (3.0, 4.0), 7.0),
])
def test_expressions_allowed(text, point, value):
    from flan_builder.sources.functions import Expression

    assert Expression(text)(dict(zip(("x1", "x2"), point, strict=True))) == pytest.approx(value)


@pytest.mark.parametrize(("text", "part"), [
    ("__import__('os')", "function '__import__' is not allowed"),
    ("__import__('os').system('ls')", "attribute access"),
    ("x1.real", "attribute access"),
    ("(1).__class__", "attribute access"),
    ("lambda x: x", "a lambda is not allowed"),
    ("(lambda: 1)()", "only the listed functions may be called"),
    ("9 ** 9 ** 9", "too large"),
    ("2 ** 1000", "too large"),
    ("x1 ** 1e6", "too large"),
    ("x1 ** (10 ** 3)", "too large"),
    ("[x1 for x1 in (1, 2)]", "a comprehension"),
    ("x3 + 1", "the name 'x3' is not allowed"),
    ("os", "not a LIFT family"),
    ("'text'", "only numbers"),
    ("True + x1", "only numbers"),
    ("open('f')", "function 'open' is not allowed"),
    ("sin(x1, x2)", "takes 1 argument"),
    ("x1 if x1 else 0", "if/else"),
    ("x1 < 2", "a comparison"),
    ("x1; x2", "not a Python expression"),
    ("1" * 5000, "characters long"),
])
def test_expressions_refused(text, part):
    from flan_builder.sources.functions import Expression, from_text

    with pytest.raises(FlanError, match="--function") as caught:
        Expression(from_text(text).get("expression", text))
    assert part in str(caught.value) and "\n" not in str(caught.value)


def test_expressions_never_reach_eval(monkeypatch):
    from flan_builder.sources.functions import Expression

    def no_eval(*args, **kwargs):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    assert Expression("sqrt(x1) * 3")({"x1": 4.0}) == 6.0


def test_expression_failures_name_the_point():
    from flan_builder.sources.functions import Expression
    from flan_builder.sources.tables import function_table

    with pytest.raises(FlanError, match=r"fails at x1=0"):
        Expression("1 / x1")({"x1": 0.0})
    with pytest.raises(FlanError, match=r"x1=2.*--x-range"):
        Expression("x1 ** x1 ** 10")({"x1": 2.0})  # overflows in floats at once, never a huge int
    with pytest.raises(FlanError, match="uses x2 but --dim is 1"):
        function_table({"expression": "x1 + x2", "dim": 1})
    assert function_table({"expression": "x1 * x2"}).feature_names == ["x1", "x2"]  # dim from the names


def test_bad_function_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["lift", "--function", "__import__('os').system('echo hi')", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "attribute access (.) is not allowed")
    code = main(["lift", "--function", "quadratc", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "not a LIFT family", "linear, quadratic")
    code = main(["lift", "--dataset", "iris", "--noise", "0.2", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "--noise goes with --function")
    code = main(["lift", "--function", "linear", "--x-range=5,1", "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "LOW < HIGH")
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# -- sample-size curves ------------------------------------------------------------------------------

def test_train_subsets_are_nested_and_keep_every_class():
    from flan_builder.sources.tables import load_sklearn, split_indices, train_subset

    iris = load_sklearn("iris")
    train, test = split_indices(iris, seed=0)
    sizes = [3, 5, 10, 20, 50, 120]
    subsets = [train_subset(iris, train, n, seed=0) for n in sizes]
    for smaller, larger, n in zip(subsets, subsets[1:], sizes[1:], strict=False):
        assert set(smaller) < set(larger) and len(larger) == n
    assert all(set(s) <= set(train) and not set(s) & set(test) for s in subsets)
    assert all(len({iris.target[i] for i in s}) == 3 for s in subsets)  # every class in every subset
    assert subsets[-1] == train
    assert train_subset(iris, train, 10, seed=0) == subsets[2]  # seeded
    assert train_subset(iris, train, 10, seed=1) != subsets[2]
    with pytest.raises(FlanError, match="3 classes"):
        train_subset(iris, train, 2, seed=0)
    with pytest.raises(FlanError, match="only 120"):
        train_subset(iris, train, 121, seed=0)


def test_train_sizes_share_one_test_split(tmp_path):
    """The built training rows shrink with the size; the test rows are the same for every size."""
    import dataclasses

    from flan_builder.sources import load_split
    from flan_builder.specs import load_registry

    spec = load_registry(TEMPLATES).task("wine")
    tests, trains = [], []
    for size in (10, 40, None):
        tabular = {**spec.source.tabular, "train_size": size}
        variant = dataclasses.replace(spec, source=dataclasses.replace(spec.source, tabular=tabular))
        trains.append(load_split(variant, "train", None).all())
        tests.append(load_split(variant, "eval", None).all())
    assert [len(t) for t in trains] == [10, 40, 142]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 36
    as_text = [{json.dumps(r, sort_keys=True) for r in rows} for rows in trains]
    assert as_text[0] < as_text[1] < as_text[2]


def test_small_training_sets_fit_every_baseline():
    from flan_builder.lift.baselines import CLASSIFIERS, fit_baselines
    from flan_builder.sources.tables import load_sklearn, split_indices, train_subset

    iris = load_sklearn("iris")
    train, test = split_indices(iris, seed=0)
    scores = fit_baselines(iris, train_subset(iris, train, 3, seed=0), test, seed=0)  # knn: 3 neighbours
    assert list(scores) == list(CLASSIFIERS) and all(0 <= s["accuracy"] <= 100 for s in scores.values())


# -- what pretraining buys --------------------------------------------------------------------------

def test_random_init_keeps_the_architecture_not_the_weights(tiny_model_dir):
    import torch
    from transformers import set_seed

    from flan_builder.models import load_model, resolve_model
    from flan_builder.training.job import random_init

    # (the tiny "pretrained" model is itself drawn with seed 0: a fresh draw uses another seed)
    pretrained = load_model(resolve_model(str(tiny_model_dir)), dtype=torch.float32)
    set_seed(1)
    fresh = random_init(pretrained)
    set_seed(1)
    again = random_init(pretrained)
    assert type(fresh) is type(pretrained) and fresh.config.to_dict() == pretrained.config.to_dict()
    ours, theirs = dict(fresh.named_parameters()), dict(pretrained.named_parameters())
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert sum(p.numel() for p in ours.values()) == sum(p.numel() for p in theirs.values())
    changed = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    # every weight matrix is redrawn (norm weights start at 1 in both, so they may agree)
    assert all(k in changed for k, v in theirs.items() if v.dim() == 2)
    assert all(torch.equal(v, dict(again.named_parameters())[k]) for k, v in ours.items())  # seeded


def test_random_init_needs_mergeable_weights(tmp_path):
    from flan_builder.training.recipe import validate_recipe

    base = {"model": "m", "heldout": "none", "output": str(tmp_path / "o"), "dataset": {"path": "d"}}
    recipe = validate_recipe({**base, "train": {"init": "random"}})
    assert recipe.train["init"] == "random"
    with pytest.raises(FlanError, match="train.init random needs a method"):
        validate_recipe({**base, "train": {"init": "random"}, "peft": {"method": "prompt_tuning"}})
    with pytest.raises(FlanError, match="train.init must be one of pretrained, random"):
        validate_recipe({**base, "train": {"init": "scratch"}})


# -- in-context LIFT ------------------------------------------------------------------------------

def _window(tokenizer, limit):
    return SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(config=SimpleNamespace(
        max_position_embeddings=limit)), name="tiny")


def _in_context(name, k, limit, tokenizer, seed=0):
    from flan_builder.lift import experiment as lift
    from flan_builder.sources.tables import load_sklearn, split_indices
    from flan_builder.specs import load_registry

    spec = lift._variant(load_registry(TEMPLATES).task(name), "names", seed, 4)
    table = load_sklearn(name)
    train, test = split_indices(table, seed)
    rendered = lift._test_rows(spec, True, 1)
    fits, _ = lift.context_fit(_window(tokenizer, limit), spec)
    demos, content = lift.demonstrations(spec, table, train, 1, True)
    rows, stats = lift.in_context_rows(spec, rendered, test, demos, content, train, k, seed, fits)
    return rendered, rows, stats, demos, train, test


def test_in_context_prompts_hold_k_demonstrations(tokenizer):
    from flan_builder.sources.tables import load_sklearn

    iris = load_sklearn("iris")
    rendered, rows, stats, demos, train, test = _in_context("iris", 4, 512, tokenizer)
    assert stats == {"shots": 4, "demonstrations_mean": 4.0, "prompts_trimmed": 0, "prompts": 30}
    texts = dict(zip(train, demos["row_01"], strict=True))
    for j, (plain, row) in enumerate(zip(rendered["row_01"], rows["row_01"], strict=True)):
        shown = row["demonstrations"]
        assert len(shown) == len(set(shown)) == 4 and set(shown) <= set(train) and test[j] not in shown
        prefix = "".join(texts[i] for i in shown)
        assert row["prompt"] == prefix + plain["prompt"]  # exactly those k, then the test prompt
        # each exemplar: the instruction with OPTIONS, the separator, its answer, FLAN's "\n\n\n"
        assert all(texts[i].endswith("\n\n" + IRIS[iris.target[i]] + "\n\n\n") for i in shown)
        assert row["prompt"].count("What is the type of iris?") == row["prompt"].count("OPTIONS:") == 5
        assert len(tokenizer(row["prompt"])["input_ids"]) <= 512
    # the draw is seeded per test row: the same again, another one with another seed
    again = _in_context("iris", 4, 512, tokenizer)[1]
    assert [r["demonstrations"] for r in again["row_01"]] == [r["demonstrations"] for r in rows["row_01"]]
    other = _in_context("iris", 4, 512, tokenizer, seed=1)[1]
    assert [r["demonstrations"] for r in other["row_01"]] != [r["demonstrations"] for r in rows["row_01"]]


def test_in_context_prompts_are_trimmed_to_the_context(tokenizer):
    # wine rows are ~150 tokens: 8 of them cannot fit a 512-token window
    _, rows, stats, _, _, _ = _in_context("wine", 8, 512, tokenizer)
    assert stats["prompts_trimmed"] == stats["prompts"] == 36 and 0 < stats["demonstrations_mean"] < 8
    for row in rows["row_01"]:
        answers = [row["prompt"] + "\n\n" + option for option in row["options"]]
        assert max(len(tokenizer(text)["input_ids"]) for text in answers) <= 512
        assert row["prompt"].count(WINE_QUESTION) == len(row["demonstrations"]) + 1


def test_in_context_needs_enough_training_rows():
    from flan_builder.lift.experiment import in_context_rows

    demos, content = {"row_01": ["a", "b", "c"]}, {0: "x=1", 1: "x=2", 2: "x=3", 9: "x=4"}
    with pytest.raises(FlanError, match="only 3 rows"):
        in_context_rows(None, {"row_01": [{}]}, [9], demos, content, [0, 1, 2], 4, 0, lambda p, r: True)
    # a training row with the test row's content is never an exemplar (it would give the answer away)
    with pytest.raises(FlanError, match="only 2 rows"):
        in_context_rows(None, {"row_01": [{}]}, [9], demos, {**content, 1: "x=4"}, [0, 1, 2], 3, 0,
                        lambda p, r: True)


# -- images as numbers: digits ----------------------------------------------------------------------

def test_digits_table_and_its_cost_in_tokens(registry, tokenizer):
    from flan_builder.sources import load_split
    from flan_builder.sources.tables import load_sklearn
    from flan_builder.templating import TaskRenderer
    from flan_builder.training.recipe import load_recipe
    from tests.helpers import REPO

    table = load_sklearn("digits")
    assert len(table.feature_names) == 64 and len(table.rows) == 1797
    assert table.classes == [str(d) for d in range(10)] and set(table.target) == set(range(10))
    assert all(isinstance(v, int) and 0 <= v <= 16 for row in table.rows for v in row)  # pixel counts
    spec = registry.task("digits")
    assert len(spec.options) == 10
    rows = load_split(spec, "train", None).all()
    renderer = TaskRenderer(spec)
    examples = [renderer.render(row, 0) for row in rows[:200]]
    lengths = [len(tokenizer(e.prompt + e.completion)["input_ids"]) for e in examples]
    # every one of the 64 pixels costs at least its name and its value
    assert min(lengths) > 2 * 64
    # and the shipped LIFT recipe's max_length keeps whole rows (no truncated answers)
    assert max(lengths) <= load_recipe(REPO / "train" / "lift.yaml").sft["max_length"]


# -- end to end on a tiny random model --------------------------------------------------------------

@pytest.mark.slow
def test_function_sizes_and_in_context_end_to_end(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "fn"
    code = main(["lift", "--function", "linear", "--function-rows", "20,8", "--train-sizes", "4,8",
                 "--in-context", "2", "--seeds", "0", "--model", str(tiny_model_dir),
                 "--out", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "function_linear_1d" and results["train_sizes"] == [4, 8]
    assert results["function"]["n_train"] == 20 and results["function"]["noise"] == 0.1
    lift = {r["train_size"]: r for r in results["records"] if r["method"] == "lift"}
    assert {size: r["train_rows"] for size, r in lift.items()} == {4: 4, 8: 8}
    baselines = {r["train_size"]: r for r in results["records"] if r["method"] == "baselines"}
    assert {s: (r["train_rows"], r["test_rows"]) for s, r in baselines.items()} == {4: (4, 8), 8: (8, 8)}
    assert {"polynomial_regression", "gaussian_process", "knn", "mlp"} <= set(baselines[4]["scores"])
    assert all(len(r["per_template"]["row_01"]["predictions"]) == 8 for r in lift.values())
    # the untuned model's rows (no size of their own) sit beside the sized runs
    base = next(r for r in results["records"] if r["method"] == "base")
    assert base["train_size"] is None and len(base["per_template"]["row_01"]["predictions"]) == 8
    icl = next(r for r in results["records"] if r["method"] == "in_context")
    assert icl["shots"] == 2 and icl["train_size"] == 8 and icl["demonstrations_mean"] == 2.0
    plot = results["function_plot"]
    assert plot["train_size"] == 8 and len(plot["test_x"]) == 8
    assert len(plot["grid_x"]) == len(plot["grid_truth"]) == len(plot["curves"]["gaussian_process"])
    report = (out / "report.md").read_text()
    assert "## By training-set size" in report and "noise-free" in report and "in-context k=2" in report
    assert (out / "report.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["names-seed0-n4", "names-seed0-n8"]


def test_random_init_beside_pretrained_end_to_end(tmp_path, capsys, tiny_model_dir):
    """--init random trains a second run from random weights; it loads as a whole model, not as an
    adapter on the pretrained weights, and has the same parameter count."""
    import torch

    from flan_builder.lm.hf import load_for_eval
    from flan_builder.models import load_model, resolve_model

    out = tmp_path / "iris"
    code = main(["lift", "--dataset", "iris", "--init", "random", "--seeds", "1", "--no-base",
                 "--train-sizes", "12", "--model", str(tiny_model_dir), "--out", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["records"] if r["method"] in ("lift", "lift_random")}
    assert runs["lift"]["parameters"] == runs["lift_random"]["parameters"]
    assert json.loads((out / "runs" / "names-seed1-n12-random" / "run.json").read_text())["init"] == "random"
    assert not (out / "runs" / "names-seed1-n12-random" / "adapter_config.json").exists()
    model, _, info = load_for_eval(str(out / "runs" / "names-seed1-n12-random"))
    assert info["method"] == "full"  # the tuned random-init weights themselves
    pretrained = load_model(resolve_model(str(tiny_model_dir)), dtype=torch.float32)
    weight = "model.layers.0.mlp.gate_proj.weight"
    tuned, original = dict(model.named_parameters()), dict(pretrained.named_parameters())
    assert not torch.allclose(tuned[weight], original[weight])
    assert "random init" in (out / "report.md").read_text()


def test_two_models_side_by_side_and_a_model_added_later(tmp_path, capsys, tiny_model_dir, monkeypatch):
    """--model A,B trains and scores each model the same way in one report; --extend --model C adds
    a model to a finished report (even one written before reports had several models) and trains
    only C's runs."""
    import shutil

    from flan_builder.lift import experiment as lift_run

    twin = tmp_path / "twin-llama"  # the same weights under another name: its untuned rows must agree
    shutil.copytree(tiny_model_dir, twin)
    out = tmp_path / "iris"
    code = main(["lift", "--dataset", "iris", "--seeds", "0", "--train-sizes", "12",
                 "--model", f"{tiny_model_dir},{twin}", "--out", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == [str(tiny_model_dir), str(twin)] and results["model"] == str(tiny_model_dir)
    by = {(r["method"], r.get("model")): r for r in results["records"]}
    assert set(by) == {("baselines", None), *((m, str(x)) for m in ("lift", "base")
                                              for x in (tiny_model_dir, twin))}
    assert by["base", str(twin)]["per_template"] == by["base", str(tiny_model_dir)]["per_template"]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["names-seed0-n12", "twin-llama-names-seed0-n12"]
    assert str(twin) in json.dumps(json.loads((out / "runs" / "twin-llama-names-seed0-n12" / "run.json")
                                              .read_text())["model_source"])
    labels = [line.split("|")[1].strip() for line in (out / "report.md").read_text().splitlines()
              if "LoRA (names" in line and "training rows" not in line]
    assert labels[:2] == [f"LIFT: {tiny_model_dir.name} + LoRA (names: names)",
                          "LIFT: twin-llama + LoRA (names: names)"]

    # a report from before several models: no "models", no "model" on its records
    old = {**results, "records": [{k: v for k, v in r.items() if k != "model"} for r in results["records"]
                                  if r.get("model") != str(twin)]}
    old.pop("models")
    (out / "results.json").write_text(json.dumps(old))
    shutil.rmtree(out / "runs" / "twin-llama-names-seed0-n12")
    third = tmp_path / "third-llama"
    shutil.copytree(tiny_model_dir, third)
    trained = []
    real_train = lift_run._train
    monkeypatch.setattr(lift_run, "_train", lambda *a, **k: trained.append(k["model"]) or real_train(*a, **k))
    code = main(["lift", "--dataset", "iris", "--seeds", "0", "--train-sizes", "12", "--model", str(third),
                 "--extend", "--out", str(out), *QUICK])
    assert code == 0, capsys.readouterr().err
    assert trained == [str(third)]
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == [str(tiny_model_dir), str(third)]
    assert {(line["method"], line.get("model")) for line in results["summary"] if "model" in line} == \
        {(m, str(x)) for m in ("lift", "base") for x in (tiny_model_dir, third)}
    # a model whose name the report already has is refused before any work
    code = main(["lift", "--dataset", "iris", "--seeds", "0", "--train-sizes", "12",
                 "--model", str(tmp_path / "elsewhere" / "third-llama"), "--extend", "--out", str(out),
                 *QUICK])
    assert code == 2 and "third-llama" in capsys.readouterr().err

"""Chain of thought (issue 17, item 3): the cot and math clusters on real rows, the eval slice of
train-only datasets, and reading answers out of generations."""

from __future__ import annotations

import json
import shutil

import pytest

from flan_builder.errors import FlanError
from flan_builder.evaluation.answers import extract_answer, read_answer, score_answers
from tests.helpers import (
    SHARED_DATA,
    TEMPLATES,
    assert_one_line_error,
    requires_shared_data,
    write_rows,
    write_spec,
)

COT_TASKS = ["cot_aqua", "cot_creak", "cot_ecqa", "cot_gsm8k", "cot_qasc", "cot_sensemaking",
             "cot_strategyqa"]


def test_cot_and_math_are_opt_in_clusters_of_generation_tasks_scored_by_answer_extraction(registry):
    assert sorted(s.name for s in registry.in_cluster("cot")) == COT_TASKS
    assert sorted(s.name for s in registry.in_cluster("math")) == ["cot_gsm8k", "gsm8k"]
    for spec in registry.in_cluster("cot") + registry.in_cluster("math"):
        assert registry.is_opt_in(spec), spec.name
        assert spec.type == "generation" and sum(not t.inverted for t in spec.templates) >= 10
        evaluation = registry.evaluation(spec)
        assert (evaluation.output_type, evaluation.metric, evaluation.max_new_tokens) == (
            "generate_until", "flan_cot", 256)
    # cot_gsm8k's questions are GSM8K train questions: holding out math takes it out of training
    assert registry.task("cot_gsm8k").clusters == ("cot", "math")
    assert registry.shares_source("gsm8k") == {"cot_gsm8k"}
    assert registry.shares_source("cos_e") == {"cot_ecqa"}


@requires_shared_data
@pytest.mark.parametrize("task", [*COT_TASKS, "gsm8k"])
def test_every_template_puts_the_rationale_first_and_its_answer_reads_back(registry, task):
    """On real rows, each non-inverted target starts with the rationale and the answer extraction
    reads the reference back out of it; inverted targets are an input field."""
    from flan_builder.sources import load_split
    from flan_builder.templating import TaskRenderer

    spec = registry.task(task)
    renderer = TaskRenderer(spec)
    for role in ("train", "eval"):
        rows = load_split(spec, role, SHARED_DATA)
        for index, row in zip(range(0, len(rows), max(1, len(rows) // 15)), rows.take(
                range(0, len(rows), max(1, len(rows) // 15))), strict=True):
            for t, template in enumerate(spec.templates):
                example = renderer.render(row, t, split=rows.split, row_index=index)
                if template.inverted:
                    assert example.target in {row[f].strip() for f in spec.fields}, (task, template.id)
                    continue
                rationale = (row.get("rationale") or row["answer"].split("####")[0]).strip()
                assert example.target.startswith(rationale), (task, template.id, index)
                assert example.references == [row["answer"].split("####")[-1].strip()]
                read, verdict = read_answer(example.target, example.references)
                assert verdict is True, (task, template.id, index, read, example.target[-80:])


@requires_shared_data
def test_a_train_only_dataset_evaluates_on_a_seeded_slice_that_never_trains(registry):
    from flan_builder.manifest import row_hash
    from flan_builder.sources import eval_slice_indices, load_split

    spec = registry.task("cot_qasc")
    everything = [json.loads(line) for line in (SHARED_DATA / "cot_qasc" / "train.jsonl").open()]
    train, held = load_split(spec, "train", SHARED_DATA), load_split(spec, "eval", SHARED_DATA)
    assert (len(train), len(held), len(everything)) == (884, 200, 1084)
    chosen = eval_slice_indices(spec, len(everything))
    assert chosen == sorted(chosen) and chosen == eval_slice_indices(spec, len(everything))  # seeded
    assert held.all() == [everything[i] for i in chosen]
    assert train.all() == [row for i, row in enumerate(everything) if i not in set(chosen)]
    assert not {row_hash(r) for r in train.all()} & {row_hash(r) for r in held.all()}
    assert (held.split, train.split) == ("train[eval slice]", "train[without the eval slice]")
    assert "eval slice: 200 rows, seed 0" in held.origin


def test_eval_slice_mistakes_are_errors_naming_the_task(tmp_path):
    from flan_builder.sources import load_split
    from flan_builder.specs import load_spec

    body = """
task: mine
cluster: qa
type: generation
source: {{mirror: mine, splits: {splits}{extra}}}
fields: [q, a]
references: "[a]"
templates:
  - {{id: t1, input: "{{{{ q }}}}"}}
"""
    same = write_spec(tmp_path, "qa", "same", body.format(splits="{train: train, eval: train}", extra=""))
    with pytest.raises(FlanError, match="for both train and eval; add source.eval_slice"):
        load_spec(same)
    apart = write_spec(tmp_path, "qa", "apart", body.format(splits="{train: train, eval: test}",
                                                            extra=", eval_slice: {rows: 2}"))
    with pytest.raises(FlanError, match="must name the same split for both"):
        load_spec(apart)
    zero = write_spec(tmp_path, "qa", "zero", body.format(splits="{train: train, eval: train}",
                                                          extra=", eval_slice: {rows: 0}"))
    with pytest.raises(FlanError, match=r"eval_slice.rows must be a whole number >= 1, got 0"):
        load_spec(zero)
    big = load_spec(write_spec(tmp_path, "qa", "big", body.format(splits="{train: train, eval: train}",
                                                                  extra=", eval_slice: {rows: 3}")))
    write_rows(tmp_path / "data", "mine", "train", [{"q": f"q{i}", "a": "x"} for i in range(3)])
    with pytest.raises(FlanError, match="task mine: source.eval_slice.rows is 3 but its split has only 3"):
        load_split(big, "train", tmp_path / "data")
    with pytest.raises(FlanError, match="task mine has no Hub copy .* --data-dir DIR with mine/train.jsonl"):
        load_split(big, "eval", None)


@requires_shared_data
def test_gsm8k_rows_with_percent_signs_render(registry):
    """'15% * $1000' in a GSM8K solution is data, not a format string, when a template splits it."""
    from flan_builder.sources import load_split
    from flan_builder.templating import TaskRenderer

    spec = registry.task("gsm8k")
    renderer = TaskRenderer(spec)
    rows = load_split(spec, "train", SHARED_DATA).all()
    hits = [(i, row) for i, row in enumerate(rows) if "% *" in row["answer"]]
    assert hits
    for index, row in hits:
        every = list(range(len(spec.templates)))
        for example in renderer.render_all(row, every, split="train", row_index=index):
            assert example.target


@requires_shared_data
def test_holding_out_cot_evaluates_its_slices_and_drops_gsm8k_rows_that_hold_them(tmp_path):
    from flan_builder.build import BuildConfig, build

    out = tmp_path / "cot"
    result = build(BuildConfig(heldout="cot", out=out, data_dir=SHARED_DATA, tasks=["gsm8k"],
                               max_eval_rows=40))
    manifest = result.manifest
    assert manifest["split_plan"]["heldout_tasks"] == COT_TASKS and manifest["split_plan"]["train_tasks"] == [
        "gsm8k"]
    assert manifest["counts"]["heldout"]["total"] == 7 * 40 * 10  # every non-inverted template
    assert manifest["evaluation"]["cot_creak"]["metric"] == "flan_cot"
    assert manifest["sources"]["cot_creak"]["split"] == "train[eval slice]"
    # cot_gsm8k's held-out questions are GSM8K train questions: those training rows are dropped
    found = manifest["contamination"]["heldout"]["cot_gsm8k"]
    assert found["rows_overlapping"] > 20 and found["training_tasks"]["gsm8k"]["declared"]
    assert manifest["contamination"]["training_rows_dropped"]["gsm8k"] > 20
    assert manifest["split_plan"]["shares_source_with_heldout"] == {"gsm8k": ["cot_gsm8k"]}
    from datasets import load_from_disk

    data = load_from_disk(str(out))
    assert not set(data["train"]["source_hash"]) & set(data["heldout"]["source_hash"])


@pytest.mark.slow
@requires_shared_data
def test_the_default_build_is_unchanged_by_the_opt_in_cot_and_math_clusters(tmp_path):
    from flan_builder.build import BuildConfig, build
    from flan_builder.specs import load_registry

    without = tmp_path / "templates"
    shutil.copytree(TEMPLATES, without, ignore=shutil.ignore_patterns("cot", "math"))
    hashes = {}
    for name, folder in (("with", TEMPLATES), ("without", without)):
        registry = load_registry(folder)
        config = BuildConfig(heldout="nli", out=tmp_path / name, data_dir=SHARED_DATA, max_eval_rows=20)
        manifest = build(config, registry=registry).manifest
        hashes[name] = manifest["content_hash"]["all"]
        if name == "with":
            excluded = manifest["split_plan"]["excluded_from_train"]
            assert excluded["cot_aqua"] == "opt-in cluster cot; add --with cot to train on it"
            assert excluded["gsm8k"] == "opt-in cluster math; add --with math to train on it"
    assert hashes["with"] == hashes["without"]


@pytest.mark.parametrize(("generation", "references", "read", "verdict"), [
    ("Natalia sold 48 / 2 = 24 clips in May.\nTherefore, the answer is 72.", ["72"], "72", True),
    ("Janet sells 9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", ["18"], "18", True),
    ("So the final answer is $1,080.00.", ["1,080"], "$1,080.00", True),
    ("The answer: 71.", ["72"], "71", False),
    ("The answer: (C).", ["(C)"], "(C)", True),
    ("Final answer: c 1120", ["(C)"], "c 1120", True),
    ("So, the answer is Sentence B.", ["Sentence A"], "Sentence B", False),
    ("Bedroom is where one sleeps. Thus, the answer is Bedroom.", ["bedroom"], "Bedroom", True),
    # a model that runs on into another question is read at its first answer
    ("The answer is yes.\n\nQ: Is fire cold? The answer is no.", ["yes"], "yes", True),
    ("Therefore, the answer (arabic numerals) is 18", ["18"], "18", True),
    # unparsable: no marker, no number after it, no option letter, nothing after the marker
    ("She makes 18 dollars a day.", ["18"], None, None),
    ("The answer is unknown.", ["18"], "unknown", None),
    ("The answer is: none of them.", ["(B)"], "none of them", None),
    ("The answer isn't clear to me.", ["yes"], None, None),
    ("Therefore, the answer is ", ["no"], None, None),
])
def test_answers_are_read_after_the_first_marker(generation, references, read, verdict):
    assert read_answer(generation, references) == (read, verdict)
    assert extract_answer(generation) == read


def test_unparsable_answers_are_wrong_counted_and_kept_in_the_denominator():
    import evaluate

    from flan_builder.evaluation.metrics import metric

    predictions = ["The answer is 72.", "I am not sure.", "The answer is 70.", "#### 1,080"]
    references = [["72"], ["5"], ["7"], ["1080"]]
    assert score_answers(predictions, references) == {"exact_match": 50.0, "unparsable": 1}
    facts = metric("flan_cot")
    assert facts.extracts_answer and facts.keys == ("exact_match", "unparsable") and facts.hub is None
    result = evaluate.load(str(facts.path)).compute(predictions=predictions, references=references)
    assert result == {"exact_match": 50.0, "unparsable": 1}


def test_a_cot_flag_without_answer_reading_tasks_is_one_line(capsys):
    from flan_builder.evaluation.cot import check_cot

    rte = {"super_glue_rte": {"output_type": "multiple_choice", "metric": "acc"}}
    with pytest.raises(FlanError, match="--cot zero-shot: no held-out task of build/x reads its answer"):
        check_cot("zero-shot", rte, "build/x")
    check_cot("none", rte, "build/x")
    from flan_builder.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", "m", "--data", "d", "--out", "o", "--cot", "few-shot"])
    assert_one_line_error(exited.value.code, capsys.readouterr().err, "--cot", "invalid choice")

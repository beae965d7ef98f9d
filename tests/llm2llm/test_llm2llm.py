"""LLM2LLM: teacher answers parsed and validated, near-copies dropped, the seed sampled, the loop
run end to end with tiny models on real TREC rows, resumed, and bad input refused in one line."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from flan_builder.cli import main
from flan_builder.errors import FlanError
from tests.helpers import REPO, SHARED_DATA, assert_one_line_error, requires_shared_data


@pytest.fixture(scope="module")
def trec(registry):
    from flan_builder.llm2llm.task_rows import task_format

    return task_format(registry.task("trec"), 1)


# -- the task's format ---------------------------------------------------------------------------

def test_task_formats_of_real_specs(registry):
    from flan_builder.llm2llm.task_rows import task_format

    trec = task_format(registry.task("trec"), 1)
    assert (trec.kind, trec.inputs, trec.answer_field) == ("classification", ("text",), "coarse_label")
    assert trec.labels[5] == "number"
    piqa = task_format(registry.task("piqa"), 2)
    # the options expression [sol1, sol2] makes the teacher write both solutions
    assert (piqa.kind, piqa.inputs, piqa.answer_field) == \
        ("multiple_choice", ("goal", "sol1", "sol2"), "label")
    rte = task_format(registry.task("super_glue_rte"), 3)
    assert rte.kind == "classification" and set(rte.inputs) == {"premise", "hypothesis"}
    nq = task_format(registry.task("nq_open"), 1)
    assert (nq.kind, nq.inputs, nq.answer_field, nq.reference_is_list) == \
        ("qa", ("question",), "answer", True)
    # a reference that is not a plain field cannot be written back from a teacher's answer
    with pytest.raises(FlanError, match=r"wmt_de_en.*translation\.en"):
        task_format(registry.task("wmt_de_en"), 1)


def test_rows_from_answers_keep_the_dataset_encoding(trec, registry):
    from flan_builder.llm2llm.task_rows import task_format
    from flan_builder.llm2llm.teacher import options_of

    row = trec.make_row({"text": "Where is Rome ?"}, "Location")
    assert row["coarse_label"] == 4 and row["text"] == "Where is Rome ?" and row["fine_label"] is None
    with pytest.raises(FlanError, match="not one of"):
        trec.make_row({"text": "Where is Rome ?"}, "city")
    piqa = task_format(registry.task("piqa"), 1)
    fields = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Shake the jar."}
    row = piqa.make_row(fields, "Twist the lid.", options_of(piqa, fields))
    assert row["label"] == 0
    assert piqa.answer_text(row, options_of(piqa, row)) == "Twist the lid."


# -- parsing teacher answers ---------------------------------------------------------------------

@pytest.mark.parametrize("text,label,why", [
    ("text: Where is the Eiffel Tower ?\nanswer: location", 4, "ok"),
    ("Sure! Here is a new example:\n**text**: Who wrote Hamlet ?\n**answer**: person\n", 3, "ok"),
    ("text: What does NASA stand for ?\nanswer: abbreviation\n\ntext: What is CIA ?\nanswer: entity",
     0, "ok"),
    ('text: "How far is the Moon ?"\nanswer: "number."', 5, "ok"),
    ("text: Where is Paris ?", None, "missing answer"),
    ("answer: location", None, "missing text"),
    ("text: ...\nanswer: location", None, "placeholder in text"),
    ("text: Where is Paris ?\nanswer: city", None, "is not one of"),
    ("I cannot help with that.", None, "missing text, answer"),
    ("", None, "missing text, answer"),
])
def test_parse_teacher_answers(trec, text, label, why):
    from flan_builder.llm2llm.teacher import parse_answer

    row, verdict = parse_answer(trec, text)
    assert why in verdict
    assert (row is None) == (label is None)
    if row is not None:
        assert row["coarse_label"] == label and row["text"] and '"' not in row["text"]


def test_first_example_wins_and_values_may_span_lines(trec):
    from flan_builder.llm2llm.teacher import parse_answer

    text = "text: What is the\nlongest river ?\nanswer: location\ntext: Who ?\nanswer: person"
    row, _ = parse_answer(trec, text)
    assert row["text"] == "What is the\nlongest river ?" and row["coarse_label"] == 4


def test_math_and_qa_answers(registry):
    from flan_builder.llm2llm.grading import final_number, is_correct, normalise

    assert final_number("She has 3 + 4 = 7 apples.\n#### 7") == 7
    assert final_number("The answer is 1,250 dollars") == 1250
    assert final_number("no number") is None
    assert is_correct("math", "so 12 in all #### 12", ["... #### 12"])
    assert not is_correct("math", "I do not know", ["#### 12"])  # unparsable: wrong
    assert normalise("The  Eiffel Tower!") == "eiffel tower"
    assert is_correct("qa", "the Eiffel tower.", ["Eiffel Tower", "Tour Eiffel"])
    assert not is_correct("qa", "Paris", ["Eiffel Tower"])


# -- near-copies ---------------------------------------------------------------------------------

def test_rouge_dedup_drops_near_copies_only():
    from flan_builder.llm2llm.dedup import RougeDeduper

    deduper = RougeDeduper(0.95, ["What is the capital of France ?"])
    assert deduper.check("what is the capital of France")[0] is False  # same words: F1 = 1.0
    keep, score = deduper.check("What is the capital city of Germany ?")
    assert keep and 0.5 < score < 0.95
    # the kept text now counts against later ones
    assert deduper.check("What is the capital city of Germany")[0] is False
    assert RougeDeduper(0.5, ["a b c d"]).check("a b c e")[0] is False  # F1 0.75 > 0.5


# -- the seed ------------------------------------------------------------------------------------

def test_seed_is_stratified_and_seeded():
    from flan_builder.llm2llm.task_rows import sample_seed, seed_count

    rows = [{"label": 0}] * 80 + [{"label": 1}] * 15 + [{"label": 2}] * 5
    chosen = sample_seed(rows, 20, 0, "label")
    assert Counter(rows[i]["label"] for i in chosen) == {0: 16, 1: 3, 2: 1}
    assert chosen == sample_seed(rows, 20, 0, "label") != sample_seed(rows, 20, 1, "label")
    assert len(set(chosen)) == 20
    assert seed_count(0.01, 5000, "t") == 50 and seed_count(50, 5000, "t") == 50
    with pytest.raises(FlanError, match="larger than the train split"):
        seed_count(6000, 5000, "task trec")


# -- recipes -------------------------------------------------------------------------------------

def _recipe(tmp_path, student, teacher, **top):
    data = yaml.safe_load((REPO / "train" / "llm2llm-trec.yaml").read_text(encoding="utf-8"))
    data.update({"data_dir": str(SHARED_DATA), "seed_size": 12, "max_test_rows": 12, "iterations": 1, **top})
    data["student"].update(model=str(student), peft={"method": "lora", "r": 4, "alpha": 8})
    data["student"]["sft"].update(max_steps=2, num_train_epochs=1, disable_tqdm=True, max_length=96)
    data["teacher"].update(model=str(teacher), max_new_tokens=16)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("override,parts", [
    ("variants=[one_shot]", ["variants", "needs llm2llm"]),
    ("variants=[llm2llm,magic]", ["variants", "llm2llm, one_shot"]),
    ("seed_size=0", ["seed_size"]),
    ("dedup_threshold=1.5", ["dedup_threshold"]),
    ("teacher.endpoint=localhost:8000", ["teacher.endpoint", "http"]),
    ("student.sft.learning_rat=1", ["sft.learning_rat", "learning_rate"]),
    ("iteratons=2", ["iteratons", "iterations"]),
])
def test_bad_recipes_are_one_line_errors(capsys, override, parts):
    code = main(["llm2llm", "train/llm2llm-trec.yaml", "--show-prompt", "--set", override])
    assert_one_line_error(code, capsys.readouterr().err, *parts)


@requires_shared_data
def test_show_prompt_names_the_example_and_its_answer(capsys, monkeypatch):
    monkeypatch.setenv("FLAN_DATA_DIR", str(SHARED_DATA))
    code = main(["llm2llm", "train/llm2llm-sst2.yaml", "--show-prompt", "--set", "show_student_answer=true"])
    assert code == 0
    prompt = capsys.readouterr().out
    assert "sentence: " in prompt and "answer: " in prompt and "negative, positive" in prompt
    assert "which is wrong" in prompt  # the student's answer, when asked for


@requires_shared_data
@pytest.mark.parametrize("override,parts", [
    ("task=piqa", ["piqa", "no train split"]),
    ("seed_size=99999", ["seed_size 99999", "larger than the train split", "5000"]),
    ("task=wmt_de_en", ["wmt_de_en", "references"]),
])
def test_bad_tasks_are_one_line_errors(capsys, monkeypatch, override, parts):
    monkeypatch.setenv("FLAN_DATA_DIR", str(SHARED_DATA))
    code = main(["llm2llm", "train/llm2llm-trec.yaml", "--show-prompt", "--set", override])
    assert_one_line_error(code, capsys.readouterr().err, *parts)


# -- the loop ------------------------------------------------------------------------------------

@requires_shared_data
@pytest.mark.slow
def test_loop_end_to_end_with_every_variant(tmp_path, capsys, tiny_model_dir):
    """A random tiny teacher writes garbage (nothing kept, and it says so); the nearest-neighbour
    control adds real held-aside rows of the right label; every iteration is committed."""
    recipe = _recipe(tmp_path, tiny_model_dir, tiny_model_dir,
                     variants=["llm2llm", "one_shot", "all_seed", "continue", "synthetic_only", "nearest"])
    out = tmp_path / "report"
    code = main(["llm2llm", str(recipe), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    records = {(r["variant"], r["iteration"]): r for r in results["records"]}
    assert len(records) == 12
    # iteration 0 is one shared student, graded once: the same scores in every variant
    assert len({(r["student"], r["test_accuracy"]) for (v, k), r in records.items() if k == 0}) == 1
    llm2llm = records[("llm2llm", 0)]
    assert llm2llm["asked"] == llm2llm["wrong_on_seed"] and llm2llm["test_rows"] == 12
    if llm2llm["added"] == 0:
        assert "no answer was usable, nothing added" in captured.err
        assert records[("llm2llm", 1)]["student"] == llm2llm["student"]  # same rows: not retrained
        assert records[("synthetic_only", 1)]["student"] == "untuned"
    assert records[("all_seed", 0)]["asked"] == 12
    # the perfect-teacher control: real train rows, outside the seed, with the wrong example's label
    folder = out / "iterations" / "seed0" / "nearest"
    nearest = [json.loads(line) for line in (folder / "iter-1" / "synthetic.jsonl").read_text().splitlines()]
    assert nearest and len(nearest) == records[("nearest", 0)]["added"]
    train = [json.loads(line) for line in (SHARED_DATA / "trec" / "train.jsonl").read_text().splitlines()]
    for entry in nearest:
        real = train[_index_of(train, entry["row"]["text"])]
        assert real["coarse_label"] == entry["row"]["coarse_label"]
    assert records[("nearest", 1)]["train_rows"] == 12 + len(nearest)
    added = [json.loads(line) for line in
             (out / "iterations" / "seed0" / "llm2llm" / "iter-0" / "added.jsonl").read_text().splitlines()]
    assert all({"seed_id", "text", "verdict", "cached"} <= set(a) for a in added)
    report = (out / "report.md").read_text()
    assert "| nearest | 1 |" in report and "Findings of the paper" in report
    assert (out / "report.png").stat().st_size > 0
    assert not list(tmp_path.glob(".report*"))


def _index_of(rows, text):
    return next(i for i, row in enumerate(rows) if row["text"] == text)


@requires_shared_data
@pytest.mark.slow
def test_resume_neither_retrains_nor_reasks(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from flan_builder.llm2llm import loop as loop_module
    from flan_builder.llm2llm.loop import Llm2llmRun, run_llm2llm
    from flan_builder.llm2llm.recipe import load_llm2llm_recipe

    path = _recipe(tmp_path, tiny_model_dir, tiny_model_dir, iterations=2)
    out = tmp_path / "run"
    real_commit = loop_module.Loop.commit

    def stop_in_iteration_1(self, seed, variant, k, *args):
        if k == 1:  # the teacher has answered iteration 1; stop before it is committed
            raise KeyboardInterrupt
        real_commit(self, seed, variant, k, *args)

    monkeypatch.setattr(loop_module.Loop, "commit", stop_in_iteration_1)
    with pytest.raises(KeyboardInterrupt):
        run_llm2llm(Llm2llmRun(load_llm2llm_recipe(path), out))
    assert not out.exists()
    work = tmp_path / ".run.partial"
    assert (work / "seed0" / "llm2llm" / "iter-0" / "record.json").is_file()
    assert not (work / "seed0" / "llm2llm" / "iter-1").exists()  # no half iteration
    cached = len((work / "teacher_cache.jsonl").read_text().splitlines())
    asked_0 = json.loads((work / "seed0" / "llm2llm" / "iter-0" / "record.json").read_text())["asked"]
    assert cached > asked_0  # iteration 1's answers were cached before the stop

    capsys.readouterr()
    code = main(["llm2llm", str(path), "--out", str(out)])  # no --resume: refused, nothing lost
    assert_one_line_error(code, capsys.readouterr().err, "--resume")

    monkeypatch.setattr(loop_module.Loop, "commit", real_commit)
    import flan_builder.training.job as job

    trained = []
    real_train = job.train
    monkeypatch.setattr(job, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    code = main(["llm2llm", str(path), "--out", str(out), "--resume"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert [r["iteration"] for r in results["records"]] == [0, 1, 2]
    # iteration 1's student and grades were kept; only iteration 2's student may be new
    assert len(trained) <= 1
    # the teacher's iteration-1 answers came from the cache: nothing was asked twice
    assert len((out / "teacher_cache.jsonl").read_text().splitlines()) == cached
    again = [json.loads(line) for line in
             (out / "iterations" / "seed0" / "llm2llm" / "iter-1" / "added.jsonl").read_text().splitlines()]
    assert again and all(a["cached"] for a in again)
    assert results["records"][2]["asked"] == 0  # the last iteration trains and grades only


@requires_shared_data
@pytest.mark.slow
def test_one_iteration_against_a_real_openai_compatible_server(tmp_path, capsys, tiny_model_dir, served):
    """`transformers serve` answers as the teacher (chat completions through the openai client);
    whatever it writes is parsed, validated and recorded with its token usage."""
    recipe = _recipe(tmp_path, tiny_model_dir, tiny_model_dir)
    out = tmp_path / "served"
    code = main(["llm2llm", str(recipe), "--out", str(out), "--teacher", served.url,
                 "--teacher-model", served.model])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    first = results["records"][0]
    assert served.url in results["teacher"] and first["asked"] == first["wrong_on_seed"] > 0
    assert first["teacher_usage"]["requests"] == first["asked"]
    assert first["teacher_usage"]["completion_tokens"] > 0
    cache = (out / "teacher_cache.jsonl").read_text().splitlines()
    assert len(cache) == first["asked"]
    assert first["added"] + sum(first["rejected"].values()) == first["asked"]


def test_an_unreachable_teacher_is_a_one_line_error(tmp_path, capsys, tiny_model_dir, monkeypatch):
    from tests.helpers import free_port

    recipe = _recipe(tmp_path, tiny_model_dir, tiny_model_dir)
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["llm2llm", str(recipe), "--out", str(tmp_path / "out"), "--teacher", url])
    assert_one_line_error(code, capsys.readouterr().err, url, "is the server running")

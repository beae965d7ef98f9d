"""`flan eval` on chain-of-thought and math tasks: generation, answers read out of it, unparsable rows
counted in the denominator, zero-shot CoT's two stages -- on real GSM8K rows with a tiny random model."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SHARED_DATA, assert_one_line_error, requires_shared_data

pytest.importorskip("torch")
pytest.importorskip("evaluate")
pytestmark = requires_shared_data


@pytest.fixture(scope="module")
def math_build(tmp_path_factory):
    """GSM8K's test rows and cot_gsm8k's held-out slice (3 each), every template, nothing trained."""
    from flan_builder.build import BuildConfig, build

    out = tmp_path_factory.mktemp("builds") / "math"
    build(BuildConfig(heldout="math", eval_only=True, out=out, data_dir=SHARED_DATA, max_eval_rows=3))
    return out


def _config(tmp_path, model, data, **kwargs):
    from flan_builder.evaluation.evaluator import EvalConfig

    return EvalConfig(models=[str(model)], data=data, out=tmp_path / "report", batch_size=8, **kwargs)


def _samples(report, record):
    text = (report / record["samples"]).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_answers_are_read_from_generations_and_unparsable_rows_stay_in_the_denominator(
        tmp_path, tiny_model_dir, math_build):
    from flan_builder.evaluation.answers import read_answer
    from flan_builder.evaluation.evaluator import evaluate_models

    results = evaluate_models(_config(tmp_path, tiny_model_dir, math_build, templates=2, log_samples=True))
    report = tmp_path / "report"
    assert {r["task"] for r in results["records"]} == {"gsm8k", "cot_gsm8k"} and len(results["records"]) == 4
    for record in results["records"]:
        assert record["metric"] == "exact_match" and record["cot"] == "none"
        scores = record["scores"]
        assert set(scores) == {"exact_match", "unparsable", "n", "examples"} and scores["n"] == 3
        samples = _samples(report, record)
        assert len(samples) == 3
        for sample in samples:  # each row's verdict is the extractor's on what the model wrote
            read, verdict = read_answer(sample["answer"], sample["references"])
            assert (sample["extracted"], sample["correct"], sample["unparsable"]) == (
                read, verdict is True, verdict is None)
        assert scores["unparsable"] == sum(s["unparsable"] for s in samples)
        assert scores["exact_match"] == pytest.approx(100 * sum(s["correct"] for s in samples) / 3)
    gsm8k = [json.loads(line) for line in (SHARED_DATA / "gsm8k" / "test.jsonl").open()]
    finals = {row["answer"].split("####")[-1].strip() for row in gsm8k}
    gsm8k_samples = [s for r in results["records"] if r["task"] == "gsm8k" for s in _samples(report, r)]
    assert all(s["references"][0] in finals for s in gsm8k_samples)  # scored on the test split's numbers
    for entry in results["datasets"]:  # per dataset: unparsable rows of all rows scored, over templates
        group = [r for r in results["records"] if r["task"] == entry["task"]]
        assert entry["unparsable"] == sum(r["scores"]["unparsable"] for r in group)
        assert entry["rows_scored"] == 6
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "| unparsable |" in text and "`unparsable` rows" in text


def test_zero_shot_cot_reasons_then_answers_after_the_answer_trigger(tmp_path, tiny_model_dir, math_build,
                                                                      capsys):
    from flan_builder.cli import main
    from flan_builder.evaluation.cot import NUMBER_TRIGGER, TRIGGER, zero_shot_cot
    from flan_builder.lm.base import GenerationRequest
    from flan_builder.lm.hf import HFLM

    out = tmp_path / "zs"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(math_build), "--out", str(out),
                 "--task", "gsm8k", "--templates", "1", "--limit", "2", "--cot", "zero-shot", "--log-samples",
                 "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["cot"] == "zero-shot"
    [record] = results["records"]
    assert record["cot"] == "zero-shot" and record["scores"]["n"] == 2
    for sample in _samples(out, record):
        assert sample["answer"].startswith(TRIGGER + " ") and f"\n{NUMBER_TRIGGER} " in sample["answer"]
    assert "Chain of thought zero-shot" in (out / "report.md").read_text(encoding="utf-8")

    # the answer stage continues the reasoning stage's own text
    lm = HFLM.load(str(tiny_model_dir), batch_size=2)
    prompt = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    evaluation = {"max_new_tokens": 12, "stop": []}
    [chain] = zero_shot_cot(lm, [prompt], [["7"]], "\n\n", evaluation)
    assert chain.reasoning_prompt == f"{prompt}\n\n{TRIGGER}"
    assert chain.reasoning == lm.generate([GenerationRequest(chain.reasoning_prompt, 12)])[0]
    assert chain.answer_prompt == f"{prompt}\n\n{TRIGGER} {chain.reasoning}\n{NUMBER_TRIGGER}"
    assert chain.prediction == f"{NUMBER_TRIGGER} {chain.answer}"
    [text_chain] = zero_shot_cot(lm, [prompt], [["yes"]], "\n\n", evaluation)
    assert text_chain.answer_prompt.endswith("\nTherefore, the answer is")


def test_a_resumed_evaluation_redoes_groups_scored_in_another_cot_mode(tmp_path, tiny_model_dir, math_build,
                                                                       monkeypatch):
    from flan_builder.evaluation import evaluator as run

    original, calls = run.score_generation, []

    def failing_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(kwargs["cot"])
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "score_generation", failing_after_one)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate_models(_config(tmp_path, tiny_model_dir, math_build, templates=1, limit=1))
    counted = []
    monkeypatch.setattr(run, "score_generation",
                        lambda *a, **k: counted.append(k["cot"]) or original(*a, **k))
    results = run.evaluate_models(_config(tmp_path, tiny_model_dir, math_build, templates=1, limit=1,
                                          cot="zero-shot"))
    assert counted == ["zero-shot", "zero-shot"]  # nothing reused from the plain run
    assert {r["cot"] for r in results["records"]} == {"zero-shot"}


def test_zero_shot_cot_on_data_without_answer_reading_tasks_is_one_line(tmp_path, tiny_model_dir, toy_build,
                                                                         capsys):
    from flan_builder.cli import main

    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(toy_build),
                 "--out", str(tmp_path / "r"), "--cot", "zero-shot"])
    assert_one_line_error(code, capsys.readouterr().err, "--cot zero-shot", "--heldout cot")
    assert not (tmp_path / "r").exists()

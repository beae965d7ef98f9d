"""`flan eval --shots K --shots-from mixture`: exemplars from the build's training rows (in-context
learning on the data a tuned model saw), not from the held-out task's own train split."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("evaluate")


def test_mixture_exemplars_are_training_rows_the_same_for_every_template(tmp_path, tiny_model_dir, toy_build):
    from datasets import load_from_disk

    from flan_builder.cli import main

    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(toy_build), "--out", str(out),
                 "--shots", "2", "--shots-from", "mixture", "--log-samples", "--templates", "2",
                 "--options", "both"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == 2 and results["shots_from"] == "mixture"
    built = load_from_disk(str(toy_build))
    train, heldout = built["train"], built["heldout"]
    trained_tasks = set(train["task"])
    # every training row as it would be shown (FLAN's default pattern: input, separator, answer)
    shown = {(row["prompt"] if options else row["input"]) + "\n\n" + row["target"]: i
             for options in (True, False) for i, row in enumerate(train)}
    own = {(r["template_id"], r["source_index"]): r for r in heldout}
    drawn: dict[int, list[int]] = {}
    for record in results["records"]:
        assert record["shots"] == record["shots_used"] == 2 and record["shots_from"] == "mixture"
        for sample in map(json.loads, (out / record["samples"]).read_text(encoding="utf-8").splitlines()):
            *exemplars, query = sample["prompt"].split("\n\n\n")
            assert len(exemplars) == 2 and all(e in shown for e in exemplars), exemplars
            rows = [shown[e] for e in exemplars]
            # from the training mixture: other clusters' tasks, never the held-out task itself
            assert {train[i]["task"] for i in rows} <= trained_tasks and record["task"] not in trained_tasks
            row = own[(record["template"], sample["source_index"])]
            assert query == (row["prompt"] if record["options"] else row["input"])
            # the same exemplars under every template and OPTIONS setting
            assert drawn.setdefault(sample["source_index"], rows) == rows
    assert len(drawn) > 1 and len({tuple(r) for r in drawn.values()}) > 1


def test_shots_from_an_unknown_source_is_a_one_line_error(tmp_path, toy_build, capsys):
    from flan_builder.cli import main

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"data: {toy_build}\nout: {tmp_path / 'r'}\nmodels: [x]\nshots: 1\nshots_from: web\n")
    code = main(["eval", str(suite)])
    assert_one_line_error(code, capsys.readouterr().err, "shots_from 'web'", "task", "mixture")

"""A user's own task, as a user tries it: a folder with one spec beside the shipped templates,
an evaluation-only build that loads and evaluates, and errors that say what to change."""

from __future__ import annotations

import pytest
from datasets import load_from_disk

from flan_builder.cli import main
from tests.helpers import SHARED_DATA, assert_one_line_error, requires_shared_data, write_spec

pytestmark = requires_shared_data

LM_EVAL_RTE = """
task: {name}
cluster: nli
type: classification
source:
  hub_id: aps/super_glue
  config: rte
  mirror: super_glue_rte
  splits: {{eval: validation}}
fields: [premise, hypothesis, label]
options: ["True", "False"]
answer: {answer}
templates:
  - id: lm_eval
    input: "{{{{ premise }}}}\\nQuestion: {{{{ hypothesis }}}} True or False?\\nAnswer:"
"""


def mine(tmp_path, name="my_rte", answer="label"):
    write_spec(tmp_path / "mine", "nli", name, LM_EVAL_RTE.format(name=name, answer=answer))
    return ["--templates-dir", str(tmp_path / "mine")]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_user_folder_adds_to_the_shipped_templates(capsys, tmp_path):
    code, shipped_only, _ = run(capsys, "tasks", "--data-dir", str(SHARED_DATA))
    assert code == 0
    code, both, _ = run(capsys, "tasks", *mine(tmp_path), "--data-dir", str(SHARED_DATA))
    assert code == 0
    assert "my_rte " in both and "super_glue_rte " in both
    assert len(both.splitlines()) == len(shipped_only.splitlines()) + 1
    code, alone, _ = run(capsys, "tasks", *mine(tmp_path), "--no-shipped-templates",
                         "--data-dir", str(SHARED_DATA))
    assert code == 0 and "my_rte " in alone and "super_glue_rte " not in alone


def test_a_user_spec_replaces_the_shipped_task_of_the_same_name(capsys, tmp_path):
    code, out, _ = run(capsys, "tasks", *mine(tmp_path, name="super_glue_rte"), "--cluster", "nli",
                       "--data-dir", str(SHARED_DATA))
    assert code == 0
    rte = next(line for line in out.splitlines() if line.startswith("super_glue_rte "))
    assert " 1 " in rte  # one template: the user's spec, not the shipped one with ten


def test_an_evaluation_only_build_loads_and_evaluates(capsys, tmp_path, tiny_model_dir):
    code, out, err = run(capsys, "build", *mine(tmp_path), "--heldout", "nli", "--tasks", "my_rte",
                         "--eval-only", "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "train: 0 rows" in out and "heldout: 277 rows from 1 task" in out
    built = load_from_disk(str(tmp_path / "b"))  # an empty train split used to break this
    assert len(built["train"]) == 0 and len(built["heldout"]) == 277
    assert set(built["heldout"]["task"]) == {"my_rte"}
    code, out, err = run(capsys, "eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "b"),
                         "--out", str(tmp_path / "r"), "--limit", "8")
    assert code == 0, err
    assert "my_rte" in out and (tmp_path / "r" / "results.json").is_file()


def test_tasks_naming_only_heldout_tasks_points_to_eval_only(capsys, tmp_path):
    code, _, err = run(capsys, "build", *mine(tmp_path), "--heldout", "nli", "--tasks", "my_rte",
                       "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "--tasks leaves nothing to train on", "--eval-only")
    code, _, err = run(capsys, "build", *mine(tmp_path), "--heldout", "none", "--eval-only",
                       "--data-dir", str(SHARED_DATA),
                       "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, "--eval-only needs --heldout")


@pytest.mark.parametrize("answer, parts", [
    ('"{{ label }}"', ["my_rte.yaml", "wrapped in {{ }}", "drop the braces ('label')"]),
    ('"{0: 0, 5: 1}[label]"', ["task my_rte", "validation row", "the row's value 1 is not a key of the "
                               "mapping (0, 5)"]),
])
def test_expression_mistakes_say_what_to_change(capsys, tmp_path, answer, parts):
    code, _, err = run(capsys, "build", *mine(tmp_path, answer=answer), "--heldout", "nli", "--tasks",
                       "my_rte", "--eval-only", "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "b"))
    assert_one_line_error(code, err, *parts)
    assert "missing field" not in err


def test_lint_names_the_flags_that_relax_its_counts(capsys, tmp_path):
    code, out, err = run(capsys, "templates", "lint", *mine(tmp_path), "--no-shipped-templates",
                         "--data-dir", str(SHARED_DATA))
    assert code != 0
    assert "--min-templates N relaxes it" in out + err and "--min-inverted N relaxes it" in out + err
    code, out, err = run(capsys, "templates", "lint", *mine(tmp_path), "--no-shipped-templates",
                         "--data-dir", str(SHARED_DATA), "--min-templates", "1", "--min-inverted", "0")
    assert code == 0, out + err

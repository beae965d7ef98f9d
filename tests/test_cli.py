"""The ``flan`` command: real output, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flan_builder.cli import main
from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    REPO,
    SHARED_DATA,
    assert_one_line_error,
    requires_shared_data,
    write_choice_spec,
    write_rows,
)

FIX = ["--templates-dir", str(FIXTURE_TEMPLATES), "--no-shipped-templates"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@requires_shared_data
def test_tasks_lists_every_task_with_cluster_type_templates_and_splits(capsys):
    code, out, _ = run(capsys, "tasks", "--data-dir", str(SHARED_DATA))
    assert code == 0
    # 32 shared datasets + 5 scikit-learn tables + 7 chain-of-thought sources + GSM8K
    assert "45 tasks in 14 clusters" in out
    creak = next(line for line in out.splitlines() if line.startswith("cot_creak "))
    assert "train=train eval=train[200 held out]" in creak  # evaluated on a slice of its only split
    iris = next(line for line in out.splitlines() if line.startswith("iris "))
    assert "tabular" in iris and "train=train eval=test" in iris
    rte = next(line for line in out.splitlines() if line.startswith("super_glue_rte "))
    assert "nli" in rte and "classification" in rte and "train=train eval=validation" in rte
    assert "(missing)" not in out


@requires_shared_data
def test_templates_show_renders_real_rows_with_and_without_options(capsys):
    code, out, _ = run(capsys, "templates", "show", "super_glue_rte", "--data-dir", str(SHARED_DATA))
    assert code == 0
    assert "No Weapons of Mass Destruction Found in Iraq Yet." in out
    assert out.count("--- prompt with OPTIONS ---") == 10
    assert out.count("--- prompt without OPTIONS ---") == 10
    assert out.count("(inverted)") == 3
    assert "OPTIONS:\n- yes\n- no" in out


def test_build_prints_counts(capsys, tmp_path):
    code, out, _ = run(capsys, "build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA),
                       "--out", str(tmp_path / "o"), *FIX)
    assert code == 0
    assert "heldout: 12 rows from 1 task (nli 12)" in out
    assert "removed from training: nli, paraphrase" in out


def test_unknown_cluster(capsys, tmp_path):
    code, _, err = run(capsys, "build", "--heldout", "nil", "--data-dir", str(FIXTURE_DATA),
                       "--out", str(tmp_path / "o"), *FIX)
    assert_one_line_error(code, err, "unknown cluster 'nil'", "valid clusters: nli, paraphrase")


def test_unknown_task(capsys):
    code, _, err = run(capsys, "templates", "show", "toy_nil", "--data-dir", str(FIXTURE_DATA), *FIX)
    assert_one_line_error(code, err, "unknown task 'toy_nil'", "toy_nli")


def test_output_directory_exists(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    code, _, err = run(capsys, "build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA),
                       "--out", str(tmp_path / "o"), *FIX)
    assert_one_line_error(code, err, "already exists", "--overwrite")


def test_missing_data_dir_split_and_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "build", "--heldout", "nli", "--data-dir", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "o"), *FIX)
    assert_one_line_error(code, err, "does not exist", "--data-dir")
    data = tmp_path / "data"
    write_rows(data, "toy_nli", "train", [{"premise": "a", "hypothesis": "b", "label": 0}])
    code, _, err = run(capsys, "build", "--heldout", "none", "--data-dir", str(data),
                       "--out", str(tmp_path / "o"), "--tasks", "toy_nli", *FIX)
    assert code == 0  # train-only with the one dataset present
    code, _, err = run(capsys, "build", "--heldout", "nli", "--data-dir", str(data),
                       "--out", str(tmp_path / "o2"), *FIX)
    assert_one_line_error(code, err, "task toy_multi", "not found in the mirror")
    write_rows(data, "toy_multi", "train", [{"text": "x", "choices": ["a"], "label": 0}])
    write_rows(data, "toy_para", "train", [{"a": "x", "b": "y", "label": 0}])
    write_rows(data, "toy_qa", "train", [{"question": "x", "answers": ["y"]}])
    code, _, err = run(capsys, "build", "--heldout", "nli", "--data-dir", str(data),
                       "--out", str(tmp_path / "o3"), *FIX)
    assert_one_line_error(code, err, "task toy_nli", "split 'validation' not found")


def _broken_registry(tmp_path, template: str, rows: list[dict]):
    write_choice_spec(tmp_path / "t", "bad", "suspect", template)
    write_rows(tmp_path / "d", "bad", "train", rows)
    return ["--templates-dir", str(tmp_path / "t"), "--no-shipped-templates",
            "--data-dir", str(tmp_path / "d"),
            "--out", str(tmp_path / "o"), "--all-templates"]


def test_template_syntax_error_names_file_template_and_line(capsys, tmp_path):
    args = _broken_registry(tmp_path, "Question: {{ text }", [])
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "bad.yaml:14", "template suspect", "line 1 of its input",
                          "syntax error")


def test_missing_field_names_task_template_row_and_field(capsys, tmp_path):
    rows = [{"text": "t", "choices": ["a", "b"], "label": 0}]
    args = _broken_registry(tmp_path, "{{ txet }}?", rows)
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "task bad", "template suspect", "train row 0",
                          "missing field 'txet'")


def test_missing_declared_field_in_data(capsys, tmp_path):
    rows = [{"text": "t", "choices": ["a", "b"], "label": 0}, {"text": "u", "label": 1}]
    args = _broken_registry(tmp_path, "{{ text }}?", rows)
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "task bad", "train row 1", "lacks field(s) choices")


def test_label_out_of_range_names_the_row(capsys, tmp_path):
    rows = [{"text": "t", "choices": ["a", "b"], "label": 0},
            {"text": "u", "choices": ["a", "b"], "label": 2}]
    args = _broken_registry(tmp_path, "{{ text }}?", rows)
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "task bad", "train row 1", "label out of range")


def test_null_field_is_an_error_naming_row_and_field(capsys, tmp_path):
    rows = [{"text": "t", "choices": ["a", "b"], "label": 0},
            {"text": None, "choices": ["a", "b"], "label": 1}]
    args = _broken_registry(tmp_path, "{{ text }}?", rows)
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "task bad", "train row 1", "field 'text' is null")
    assert not (tmp_path / "o").exists()


def test_duplicate_template_ids_fail_build_and_lint(capsys, tmp_path):
    rows = [{"text": "t", "choices": ["a", "b"], "label": 0}]
    args = _broken_registry(tmp_path, "{{ text }}?", rows)
    spec = tmp_path / "t" / "qa" / "bad.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("id: suspect", "id: fine"), encoding="utf-8")
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "bad.yaml:", "template id 'fine' is used twice")
    code, out, err = run(capsys, "templates", "lint", "--templates-dir", str(tmp_path / "t"),
                         "--data-dir", str(tmp_path / "d"))
    assert code != 0 and "template id 'fine' is used twice" in out + err


@requires_shared_data
def test_tasks_naming_only_heldout_tasks_is_an_error(capsys, tmp_path):
    code, _, err = run(capsys, "build", "--heldout", "nli", "--tasks", "super_glue_rte,glue_qnli",
                       "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "--tasks leaves nothing to train on",
                          "super_glue_rte: in the held-out cluster")
    assert not (tmp_path / "o").exists()


def test_empty_dataset(capsys, tmp_path):
    args = _broken_registry(tmp_path, "{{ text }}?", [])
    code, _, err = run(capsys, "build", "--heldout", "none", *args)
    assert_one_line_error(code, err, "task bad", "is empty")


def test_bad_number_is_an_argparse_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["build", "--heldout", "nli", "--out", str(tmp_path), "--rate-cap", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "flan build --heldout nli --data-dir" in capsys.readouterr().out


def test_import_and_build_do_not_import_torch(tmp_path):
    script = (
        "import sys\n"
        "import flan_builder\n"
        "from flan_builder.cli import main\n"
        f"code = main(['build', '--heldout', 'nli', '--data-dir', {str(FIXTURE_DATA)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}, '--templates-dir', {str(FIXTURE_TEMPLATES)!r}, "
        "'--no-shipped-templates'])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_console_script_is_installed():
    result = subprocess.run([str(REPO / ".venv" / "bin" / "flan"), "--version"],
                            capture_output=True, text=True) if (REPO / ".venv" / "bin" / "flan").exists() \
        else subprocess.run([sys.executable, "-m", "flan_builder.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "flan-builder" in result.stdout


# -- failures of the world below: files, encodings, missing extras -------------------------------

def _copy_fixture_templates(tmp_path):
    import shutil

    root = tmp_path / "t"
    shutil.copytree(FIXTURE_TEMPLATES, root)
    return root


def test_spec_file_that_is_not_utf8_names_the_file(capsys, tmp_path):
    root = _copy_fixture_templates(tmp_path)
    spec = root / "nli" / "toy_nli.yaml"
    spec.write_bytes(spec.read_bytes() + "# café\n".encode("latin-1"))
    code, _, err = run(capsys, "tasks", "--templates-dir", str(root))
    assert_one_line_error(code, err, str(spec), "not UTF-8")


def test_data_file_that_is_not_utf8_names_the_file(capsys, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(FIXTURE_DATA, data)
    bad = data / "toy_nli" / "train.jsonl"
    bad.write_bytes(bad.read_bytes() + '{"premise": "caf\xe9"}\n'.encode("latin-1"))
    code, _, err = run(capsys, "build", "--heldout", "none", "--data-dir", str(data),
                       "--out", str(tmp_path / "o"), *FIX)
    assert_one_line_error(code, err, "task toy_nli", str(bad), "not UTF-8")


def test_unwritable_output_path_is_one_line_naming_it(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    code, _, err = run(capsys, "build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA),
                       "--out", str(blocker / "out"), *FIX)
    assert_one_line_error(code, err, str(blocker), "check that the path exists")


def test_train_without_the_train_extra_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ModuleNotFoundError
    code, _, err = run(capsys, "train", str(REPO / "train" / "heldout-nli.yaml"), "--check")
    assert_one_line_error(code, err, "flan train needs the [train] extra",
                          "pip install 'flan-builder[train]'")


@pytest.mark.parametrize(("missing", "extra"), [("evaluate", "eval"), ("torch", "eval"),
                                                 ("transformers.models", "eval")])
def test_eval_without_the_eval_extra_says_how_to_install_it(capsys, monkeypatch, missing, extra):
    from flan_builder.evaluation import cli as eval_cli

    def needs_extra(args):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(eval_cli, "cmd_eval", needs_extra)
    code, _, err = run(capsys, "eval", "suite.yaml")
    assert_one_line_error(code, err, f"flan eval needs the [{extra}] extra",
                          f"pip install 'flan-builder[{extra}]'")


@pytest.mark.parametrize("error", [ModuleNotFoundError("No module named 'flan_builder.nope'",
                                                       name="flan_builder.nope"),
                                   RuntimeError("a bug"), KeyError("x")])
def test_programming_errors_keep_their_traceback(monkeypatch, error):
    from flan_builder.evaluation import cli as eval_cli

    def buggy(args):
        raise error

    monkeypatch.setattr(eval_cli, "cmd_eval", buggy)
    with pytest.raises(type(error)):
        main(["eval", "suite.yaml"])

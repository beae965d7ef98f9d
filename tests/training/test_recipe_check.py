"""Recipe values are checked before any work: `flan train --check` builds the real SFTConfig and
PEFT config and resolves the model, and a run with a bad value leaves nothing behind."""

from __future__ import annotations

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from tests.helpers import assert_one_line_error, make_recipe, train_recipe


@pytest.fixture
def recipe(tmp_path, tiny_model_dir, toy_build):
    return make_recipe(tmp_path, tiny_model_dir, toy_build)


def check(capsys, recipe, *args):
    code = main(["train", str(recipe), "--check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_passes_and_names_model_method_and_steps(capsys, recipe):
    code, out, _ = check(capsys, recipe)
    assert code == 0
    assert "ok (" in out and "lora" in out and "4 steps" in out


@pytest.mark.parametrize("args, parts", [
    (["--set", "sft.max_steps=ten"], ["sft.max_steps must be an integer", "'ten'"]),
    (["--set", "sft.learning_rate=fast"], ["sft.learning_rate must be a number", "'fast'"]),
    (["--max-steps", "0"], ["sft.max_steps must be at least 1", "got 0"]),
    (["--max-steps", "-5"], ["sft.max_steps must be at least 1", "got -5"]),
    (["--set", "sft.packing=maybe"], ["sft.packing must be true/false"]),
    # only the real SFTConfig knows its enums: the check must build it
    (["--set", "sft.lr_scheduler_type=fastest"], ["bad sft settings", "fastest is not a valid"]),
    (["--model", "missing/model.gguf"], ["missing/model.gguf not found"]),
    # several methods are a comparison: pointed to flan compare, not a confusing enum error
    (["--peft", "lora,ia3"], ["one method per run", "flan compare", "--methods lora,ia3"]),
])
def test_bad_values_fail_the_check(capsys, recipe, args, parts):
    code, _, err = check(capsys, recipe, *args)
    assert_one_line_error(code, err, *parts)


def test_numbers_yaml_reads_as_text_are_accepted(capsys, recipe):
    code, out, _ = check(capsys, recipe, "--set", "sft.learning_rate=1e-4", "--max-steps", "-1")
    assert code == 0, out


def test_a_bad_value_leaves_no_partial_run(recipe, tmp_path):
    with pytest.raises(FlanError, match="fastest is not a valid"):
        train_recipe(recipe, ["sft.lr_scheduler_type=fastest"])
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / ".run.partial").exists()

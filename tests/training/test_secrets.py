"""Secrets stay secret: no token given to a recipe reaches recipe.yaml, run.json or the
command line a manifest records."""

from __future__ import annotations

import sys

import pytest
import yaml

from flan_builder.errors import FlanError
from flan_builder.redaction import is_secret_key, redact, redact_argv
from tests.helpers import REPO

pytest.importorskip("trl")

RECIPE = REPO / "train" / "heldout-nli.yaml"
SECRET = "hf_SECRETsecret123"


def test_hub_token_in_a_recipe_is_refused_pointing_at_hf_token(tmp_path):
    from flan_builder.training.recipe import load_recipe

    with pytest.raises(FlanError) as caught:
        load_recipe(RECIPE, [f"sft.hub_token={SECRET}"])
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    assert "sft.hub_token" in message and "HF_TOKEN" in message and "hf auth login" in message


def test_written_recipe_and_manifest_redact_secret_named_values(tmp_path, monkeypatch):
    from flan_builder.manifest import command_line
    from flan_builder.training.job import _write_recipe
    from flan_builder.training.recipe import load_recipe

    recipe = load_recipe(RECIPE, ["sft.learning_rate=1e-4", "sft.eos_token=<|im_end|>"])
    # Values that would reach the files if a secret-named key got past validation.
    recipe.sft["wandb_api_key"] = SECRET
    recipe.train["Service_Password"] = SECRET
    recipe.overrides += [f"sft.wandb_api_key={SECRET}", f"train.my_secret={SECRET}"]
    _write_recipe(recipe, tmp_path)
    text = (tmp_path / "recipe.yaml").read_text(encoding="utf-8")
    assert SECRET not in text
    written = yaml.safe_load(text)
    assert written["sft"]["wandb_api_key"] == "***" and written["train"]["Service_Password"] == "***"
    assert written["sft"]["learning_rate"] == 1e-4  # everything else is kept
    assert written["sft"]["eos_token"] == "<|im_end|>"  # a special token, not a credential
    assert "sft.wandb_api_key=***" in written["overrides"]
    assert SECRET not in str(recipe.to_json())  # run.json's "recipe"

    monkeypatch.setattr(sys, "argv", ["flan", "train", "r.yaml", "--set", f"sft.x_token={SECRET}",
                                      "--api-key", SECRET, "--set", "sft.seed=3"])
    command = command_line()  # run.json's and the build manifest's "command"
    assert SECRET not in command and "sft.seed=3" in command and "sft.x_token=***" in command


@pytest.mark.parametrize(("key", "secret"), [
    ("hub_token", True), ("HF_TOKEN", True), ("wandb_api_key", True), ("apiKey", True),
    ("db_password", True), ("client_secret", True), ("eos_token", False), ("pad_token", False),
    ("max_new_tokens", False), ("include_num_input_tokens_seen", False), ("learning_rate", False),
])
def test_which_keys_are_secret(key, secret):
    assert is_secret_key(key) is secret
    assert (redact({key: "v"})[key] == "***") is secret
    assert (redact_argv(["flan", f"{key}=v"])[1] == f"{key}=***") is secret

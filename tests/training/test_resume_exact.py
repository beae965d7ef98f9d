"""A resumed run is the same run: no step past max_steps, and run.json's steps, tokens seen,
train loss and loss curve cover the whole run, equal to an uninterrupted one's."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from flan_builder.training import sft
from tests.helpers import make_recipe, train_recipe


def _interrupted_then_resumed(tmp_path, tiny_model_dir, toy_build, monkeypatch, stop_at, **sft_settings):
    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == stop_at:
                raise KeyboardInterrupt

    original_init = sft.FlanSFTTrainer.__init__

    def init_with_interrupt(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Interrupt())

    recipe = make_recipe(tmp_path, tiny_model_dir, toy_build, name="split", sft=sft_settings)
    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", init_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_recipe(recipe)
    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", original_init)

    steps_run = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    def init_counting(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(CountSteps())

    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", init_counting)
    resumed = train_recipe(recipe, resume=True)
    monkeypatch.setattr(sft.FlanSFTTrainer, "__init__", original_init)
    return resumed, steps_run


@pytest.mark.parametrize("max_steps, save_steps, stop_at", [(6, 3, 3), (5, 2, 4)])
def test_resumed_run_reports_the_whole_run(tmp_path, tiny_model_dir, toy_build, monkeypatch,
                                          max_steps, save_steps, stop_at):
    settings = {"max_steps": max_steps, "save_steps": save_steps, "logging_steps": 1}
    whole = train_recipe(make_recipe(tmp_path, tiny_model_dir, toy_build, name="whole", sft=settings))
    resumed, steps_run = _interrupted_then_resumed(tmp_path, tiny_model_dir, toy_build, monkeypatch,
                                                   stop_at, **settings)
    assert steps_run == list(range(stop_at + 1, max_steps + 1))  # no extra step, none repeated
    a, b = whole.manifest, resumed.manifest
    assert b["steps"] == a["steps"] == max_steps
    assert [s for s, _ in b["loss_curve"]] == [s for s, _ in a["loss_curve"]]
    assert b["tokens_seen"] == a["tokens_seen"]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-5)

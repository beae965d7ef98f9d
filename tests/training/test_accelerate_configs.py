"""The shipped accelerate configs for GPUs (train/accelerate/) are configs accelerate itself reads."""

from __future__ import annotations

import pytest

from flan_builder.resources import shipped_dir


@pytest.mark.parametrize("name, kind", [("fsdp.yaml", "FSDP"), ("deepspeed-zero2.yaml", "DEEPSPEED")])
def test_accelerate_reads_the_shipped_configs(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file
    from trl import SFTConfig

    config = load_config_from_file(str(shipped_dir("train") / "accelerate" / name))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    assert not config.use_cpu and config.num_processes > 1
    if kind == "FSDP":  # PEFT's frozen base and trainable adapter must share one wrapped module
        assert config.fsdp_config["fsdp_use_orig_params"] is True
    else:  # DeepSpeed takes its accumulation from here; it must match the recipes' default
        from flan_builder.training.recipe import SFT_DEFAULTS

        assert config.deepspeed_config["gradient_accumulation_steps"] == \
            SFT_DEFAULTS.get("gradient_accumulation_steps", SFTConfig.gradient_accumulation_steps)


def test_configs_are_not_listed_as_recipes():
    from flan_builder.resources import shipped

    assert all(item.path.parent.name != "accelerate" for item in shipped())

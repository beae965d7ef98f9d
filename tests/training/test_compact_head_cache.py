"""The compact LM head hands PEFT's prefix (prefix tuning) to the backbone under the keyword the
backbone takes: ``cache`` in transformers 5.x, where ``past_key_values`` is deprecated (gone in 5.40)."""

from __future__ import annotations

import warnings

import torch

from tests.helpers import tiny_config


def test_prefix_tuning_through_the_compact_head_uses_the_prefix_without_the_old_keyword():
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from flan_builder.training.sft import install_compact_lm_head

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config(64))
    ids = torch.randint(3, 64, (2, 9))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt: not scored
    without_prefix = base(input_ids=ids, labels=labels).loss

    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.normal_(0, 1.0)  # a prefix that changes the scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own forward still takes the old name, with a warning
        reference = model(input_ids=ids, labels=labels).loss
    assert install_compact_lm_head(model.get_base_model())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="`past_key_values` is deprecated", category=FutureWarning)
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    assert not torch.allclose(reference, without_prefix, atol=1e-4)
    torch.testing.assert_close(compact, reference, atol=1e-5, rtol=1e-5)

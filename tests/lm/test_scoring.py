"""Rank classification: the shared-prefix scorer equals a plain full forward pass per option."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaForCausalLM, set_seed

    set_seed(1)
    return LlamaForCausalLM(tiny_config(len(tokenizer))).eval()


ROWS = [
    ("Premise: A man plays a guitar.\nHypothesis: A person makes music.\nDoes it follow?\n\nOPTIONS:\n"
     "- yes\n- it is not possible to tell\n- no", ["yes", "it is not possible to tell", "no"]),
    ("Is 'the cat sat' grammatical?", ["acceptable", "unacceptable"]),
    ("Pick the answer. Which is a fruit?", ["apple", "car", "stone", "a very long option with many words"]),
    ("Ends with spaces   ", ["yes", "no"]),
]


def test_shared_prefix_scores_equal_full_forward_per_option(tiny_model, tokenizer):
    from flan_builder.lm.scoring import (
        encode_row,
        score_full_sequences,
        score_shared_prefix,
    )

    rows = [encode_row(tokenizer, prompt, options, "\n\n") for prompt, options in ROWS]
    assert all(r.shared for r in rows)
    fast = score_shared_prefix(tiny_model, rows, tokenizer.pad_token_id)
    reference = score_full_sequences(tiny_model, rows, tokenizer.pad_token_id)
    # and each option alone, unbatched, with no padding anywhere
    for row, fast_scores, ref_scores in zip(rows, fast, reference, strict=True):
        assert len(fast_scores) == len(row.options)
        for k, full in enumerate(row.fulls):
            ids = torch.tensor([full])
            with torch.no_grad():
                logprobs = tiny_model(input_ids=ids).logits.float().log_softmax(-1)[0]
            n = len(row.options[k])
            alone = sum(float(logprobs[len(full) - n - 1 + j, full[len(full) - n + j]]) for j in range(n))
            assert fast_scores[k] == pytest.approx(alone, abs=1e-4)
            assert ref_scores[k] == pytest.approx(alone, abs=1e-4)


def test_scored_tokens_are_the_continuation_of_the_joint_encoding(tokenizer):
    from flan_builder.lm.scoring import encode_row

    row = encode_row(tokenizer, "Answer:", ["yes", "no"], "\n\n")
    for full, scored in zip(row.fulls, row.options, strict=True):
        assert full == row.prompt + scored
        assert tokenizer.decode(scored).startswith("\n\n")


@pytest.mark.parametrize("lengths", [[20, 8], [20, 3, 19], [6, 4]])
def test_shared_prefix_is_exact_with_a_sliding_window(lengths):
    """Gemma 3's sliding-window layers keep the last W cache slots: a short prompt batched with one
    longer than W must still see its own tokens (prompts are left-padded for this)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from flan_builder.lm.scoring import Encoded, score_full_sequences, score_shared_prefix

    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=256)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    rows = [Encoded(torch.randint(5, 290, (n,), generator=generator).tolist(), [[30, 31], [40], [41, 42, 43]])
            for n in lengths]
    shared, full = score_shared_prefix(model, rows, 0), score_full_sequences(model, rows, 0)
    for a, b in zip(shared, full, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    # and the scores differ between options, so the comparison is not vacuous
    assert len({round(x, 3) for x in shared[0]}) == 3

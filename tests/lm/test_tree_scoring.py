"""The token-trie scorer (one forward pass per batch, every distinct prefix once) equals the plain
full-sequence reference (one forward pass per option, every position projected) to 1e-4."""

from __future__ import annotations

import pytest

from tests.helpers import SHARED_DATA, requires_shared_data, tiny_config

torch = pytest.importorskip("torch")


def _llama(vocab: int, attention: str):
    from transformers import LlamaForCausalLM, set_seed

    set_seed(1)
    config = tiny_config(vocab)
    config._attn_implementation = attention
    return LlamaForCausalLM(config).eval()


# Options that share leading words branch inside the trie (the case a causal mask would get wrong);
# single-token options need no option position at all; rows differ in length (padding).
ROWS = [
    ("Premise: A man plays a guitar.\nDoes it follow?\n\nOPTIONS:\n- yes\n- no",
     ["yes, it does follow", "it is not possible to tell", "it is not clear at all", "no"]),
    ("Pick one. Which is a fruit?", ["a red apple from the tree", "a red car from the shop", "stone"]),
    ("Answer:", ["True", "False"]),
    ("How do I open a jar?", ["Run the lid under hot water, then twist it.",
                              "Run the lid under cold water, then twist it."]),
]


def _alone(model, full: list[int], n: int) -> float:
    """The last n tokens' summed log-probability from one unpadded forward pass of the sequence."""
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([full])).logits.float().log_softmax(-1)[0]
    return sum(float(logprobs[len(full) - n - 1 + j, full[len(full) - n + j]]) for j in range(n))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("separator", ["\n\n", " "])
def test_tree_equals_the_full_sequence_reference(tokenizer, attention, separator):
    from flan_builder.lm.scoring import encode_row, score_full_sequences, score_tree

    model = _llama(len(tokenizer), attention)
    rows = [encode_row(tokenizer, prompt, options, separator) for prompt, options in ROWS]
    tree = score_tree(model, rows, tokenizer.pad_token_id)
    reference = score_full_sequences(model, rows, tokenizer.pad_token_id)
    for row, ours, theirs in zip(rows, tree, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)
        for k, full in enumerate(row.fulls):
            assert ours[k] == pytest.approx(_alone(model, full, len(row.options[k])), abs=1e-4)
    # not vacuous: options branch after a shared prefix, so the trie holds fewer positions than the
    # sequences, and at least one branch point has two children that both run
    for row in rows[1], rows[3]:
        unshared = len(row.prompt) + sum(len(o) - 1 for o in row.options)
        assert len(row.tree.tokens) < unshared
        assert len(row.tree.depth) > len(set(row.tree.depth))


def test_a_mask_without_the_tree_would_change_the_scores(tokenizer):
    """With plain causal attention over the flattened trie, one option's tokens would see another's:
    the scores would move, so the tests above check the mask, not a lucky layout."""
    import flan_builder.lm.scoring as scoring

    model = _llama(len(tokenizer), "sdpa")
    rows = [scoring.encode_row(tokenizer, prompt, options, " ") for prompt, options in ROWS]
    reference = scoring.score_full_sequences(model, rows, tokenizer.pad_token_id)
    masks = scoring._tree_masks

    def plain_causal(trees, width):
        depth, _ = masks(trees, width)
        return depth, torch.tril(torch.ones(len(trees), width, width, dtype=torch.bool))

    scoring._tree_masks = plain_causal
    try:
        wrong = scoring.score_tree(model, rows, tokenizer.pad_token_id)
    finally:
        scoring._tree_masks = masks
    moved = [abs(a - b) for ra, rb in zip(wrong, reference, strict=True) for a, b in zip(ra, rb, strict=True)]
    assert max(moved) > 1e-3


def test_trie_layout():
    """Each distinct prefix is one node; an option's last token is no node; each scored token is
    predicted by the node before it (the context's last node for an option's first token)."""
    from flan_builder.lm.scoring import Encoded, build_tree

    tree = build_tree(Encoded([1, 2, 3], [[4, 5, 6], [4, 5, 7], [8], [4, 9]]))
    assert tree.tokens == [1, 2, 3, 4, 5]
    assert tree.depth == [0, 1, 2, 3, 4]
    assert tree.member == [0b1111, 0b1111, 0b1111, 0b1011, 0b0011]
    assert tree.predictors == [2, 3, 4, 2, 3, 4, 2, 2, 3]
    # contexts that differ (a boundary merge, or two prompts) share only their common prefix
    tree = build_tree(Encoded([1, 2], [[3], [4, 5]], shared=False, fulls=[[1, 2, 3], [1, 7, 4, 5]]))
    assert tree.tokens == [1, 2, 7, 4]
    assert tree.depth == [0, 1, 1, 2]
    assert tree.predictors == [1, 2, 3]


def test_rows_whose_options_have_different_contexts(tokenizer):
    """A row whose sequences do not share the context's tokens (shared=False) is exact on the trie too,
    in the same batch as ordinary rows."""
    from flan_builder.lm.scoring import Encoded, encode_row, score_full_sequences, score_tree

    model = _llama(len(tokenizer), "sdpa")
    a = encode_row(tokenizer, "Is it sunny?", ["yes", "no"], "\n\n")
    b = encode_row(tokenizer, "Is it sunny? Answer briefly.", ["yes, it is", "no"], "\n\n")
    merged = Encoded(a.prompt, a.options + b.options, shared=False, fulls=a.fulls + b.fulls)
    rows = [merged, encode_row(tokenizer, "Pick one.", ["red", "blue sky"], " ")]
    tree = score_tree(model, rows, tokenizer.pad_token_id)
    reference = score_full_sequences(model, rows, tokenizer.pad_token_id)
    for ours, theirs in zip(tree, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)
    assert len(merged.tree.tokens) < sum(len(f) - 1 for f in merged.fulls)


def test_more_options_than_one_membership_word(tokenizer):
    """Membership bits spill into a second int64 word past 62 sequences."""
    from flan_builder.lm.scoring import encode_row, score_full_sequences, score_tree

    model = _llama(len(tokenizer), "sdpa")
    options = [f"option number {k} of many" for k in range(70)]
    rows = [encode_row(tokenizer, "Choose:", options, " "),
            encode_row(tokenizer, "Other:", ["a b", "a c"], " ")]
    tree = score_tree(model, rows, tokenizer.pad_token_id)
    reference = score_full_sequences(model, rows, tokenizer.pad_token_id)
    for ours, theirs in zip(tree, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_tree_is_exact_with_a_sliding_window(attention):
    """Gemma 3's sliding-window layers see only the last W positions of a node's own path: counted in
    depth, not in the flattened trie's slots."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from flan_builder.lm.scoring import Encoded, score_full_sequences, score_tree

    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=256)
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    options = [[30, 31, 32, 33, 34, 35], [30, 31, 36, 37, 38, 39, 40], [41], [42, 43, 44]]
    rows = [Encoded(torch.randint(5, 290, (n,), generator=generator).tolist(), options) for n in (20, 3, 9)]
    tree, full = score_tree(model, rows, 0), score_full_sequences(model, rows, 0)
    for a, b in zip(tree, full, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert len({round(x, 3) for x in tree[0]}) == len(options)


def test_scored_logits_takes_the_trie_where_the_attention_takes_a_mask(tokenizer):
    from flan_builder.lm.scoring import tree_supported

    assert tree_supported(_llama(len(tokenizer), "sdpa"))
    assert tree_supported(_llama(len(tokenizer), "eager"))
    model = _llama(len(tokenizer), "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # no custom 4-D masks: the cache path
    assert not tree_supported(model)


def test_batches_cut_where_padding_plus_calls_cost_least():
    """The scorer's batches: longest first, at most `size` rows, and of all cuts of the sorted rows the
    one with the fewest padded positions plus a cost per batch (checked against every cut)."""
    import itertools
    import random

    from flan_builder.lm.hf import batches

    random.seed(0)
    for _ in range(20):
        lengths = [random.choice([3, 20, 21, 80, 81, 90, 277]) for _ in range(11)]
        cut = batches(list(range(len(lengths))), 4, lengths.__getitem__, 64)
        ordered = [i for batch in cut for i in batch]
        assert sorted(ordered) == list(range(len(lengths)))
        assert [lengths[i] for i in ordered] == sorted(lengths, reverse=True)
        assert all(len(batch) <= 4 for batch in cut)

        def cost(batches_):
            return sum(len(b) * max(b) + 64 for b in batches_)

        sorted_lengths = sorted(lengths, reverse=True)
        every = []
        for marks in itertools.product([False, True], repeat=len(lengths) - 1):
            bounds = [0] + [k + 1 for k, m in enumerate(marks) if m] + [len(lengths)]
            parts = [sorted_lengths[a:b] for a, b in itertools.pairwise(bounds)]
            if all(len(p) <= 4 for p in parts):
                every.append(cost(parts))
        assert cost([[lengths[i] for i in b] for b in cut]) == min(every)
    # equal lengths fill whole batches; without a cost (generation) batches are filled as before
    assert [len(b) for b in batches(list(range(40)), 16, lambda i: 10, 64)] == [16, 16, 8]
    assert [len(b) for b in batches(list(range(40)), 16, lambda i: i)] == [16, 16, 8]


@requires_shared_data
def test_real_rte_rows_are_batched_with_little_padding(tokenizer):
    """lm-eval's RTE prompt on the 277 real validation rows, 16 rows at most: cutting every 16 rows pads
    about a tenth of all positions; the scorer's cut pads far fewer."""
    import json

    from flan_builder.lm.hf import BATCH_COST, batches

    lines = (SHARED_DATA / "super_glue_rte" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [f"{d['premise']}\nQuestion: {d['hypothesis']} True or False?\nAnswer:"
               for d in map(json.loads, lines)]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]

    def padding(cut):
        return sum(len(b) * lengths[b[0]] - sum(lengths[i] for i in b) for b in cut) / sum(lengths)

    rows = list(range(len(lengths)))
    fixed = padding(batches(rows, 16, lengths.__getitem__))
    ours = padding(batches(rows, 16, lengths.__getitem__, BATCH_COST["cpu"]))
    assert len(rows) == 277 and fixed > 0.08 and ours < fixed / 3


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_prompt_learning_models_score_only_the_positions_they_need(tokenizer, method):
    """Models that prepend virtual tokens are scored by full sequences through PEFT, the LM head on the
    predicting positions alone: the batch (padded, several lengths) equals each sequence run alone
    with every position projected."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    from flan_builder.lm.scoring import _virtual_tokens, encode_row, score_full_sequences, scored_logits

    config = {"prompt_tuning": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
              "p_tuning": PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                              encoder_hidden_size=16),
              "prefix_tuning": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)}[method]
    model = get_peft_model(_llama(len(tokenizer), "sdpa"), config).eval()
    assert _virtual_tokens(model) == (0 if method == "prefix_tuning" else config.num_virtual_tokens)
    rows = [encode_row(tokenizer, prompt, options, " ") for prompt, options in ROWS]
    ours = score_full_sequences(model, rows, tokenizer.pad_token_id)
    for row, scores in zip(rows, ours, strict=True):
        for k, full in enumerate(row.fulls):
            n = len(row.options[k])
            with torch.no_grad():  # every position projected; virtual tokens' logits come first
                logits = model(input_ids=torch.tensor([full])).logits.float()
            logprobs = logits.log_softmax(-1)[0, -len(full):]
            alone = sum(float(logprobs[len(full) - n - 1 + j, full[len(full) - n + j]]) for j in range(n))
            assert scores[k] == pytest.approx(alone, abs=1e-4)
    # only the predicting positions were projected: one logits row per scored token
    scored = scored_logits(model, rows, tokenizer.pad_token_id)
    assert scored.distinct.shape[0] == sum(len(o) for row in rows for o in row.options)

"""Rank classification: the shared-prefix scorer equals a plain full forward pass per option; only
the options' own tokens are scored (the separator is context); the " " protocol is lm-eval's."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SHARED_DATA, requires_shared_data, tiny_config

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


def test_scored_tokens_are_the_options_own_after_the_joint_encoding(tokenizer):
    from flan_builder.lm.scoring import encode_row

    row = encode_row(tokenizer, "Answer:", ["yes", "no"], "\n\n")
    assert row.shared
    # the separator is context: encoded jointly ("\n\n" before a word is two tokens, alone one)
    assert tokenizer.decode(row.prompt) == "Answer:\n\n"
    for full, scored, option in zip(row.fulls, row.options, ["yes", "no"], strict=True):
        assert full == row.prompt + scored
        assert tokenizer.decode(scored) == option
    # " " merges into the option's first token (" yes"): scored whole, lm-eval's rule
    row = encode_row(tokenizer, "Answer:", ["yes", "no"], " ")
    assert tokenizer.decode(row.prompt) == "Answer:"
    assert [tokenizer.decode(s) for s in row.options] == [" yes", " no"]


SEPARATORS = ["\n\n", "\n\n###\n\n", " | ", "\n", " ", "", "\n\nAnswer: "]


@pytest.mark.parametrize("separator", [s for s in SEPARATORS if s])
def test_scored_span_excludes_the_separators_tokens(tokenizer, separator):
    """Every scored token carries option text; what else it decodes to is whitespace merged into the
    option's first token from the separator's end (never a whole separator token)."""
    from flan_builder.lm.scoring import encode_row

    for prompt, options in ROWS:
        row = encode_row(tokenizer, prompt, options, separator)
        for full, scored, option in zip(row.fulls, row.options, options, strict=True):
            text = tokenizer.decode(scored)
            merged = text[: len(text) - len(option)]
            assert text.endswith(option) and not merged.strip() and separator.endswith(merged), \
                (separator, option, text)
            assert tokenizer.decode(full[: len(full) - len(scored)]) + text == prompt + separator + option


@pytest.mark.parametrize("separator", SEPARATORS)
def test_tokenizers_without_offsets_split_at_the_same_place(tokenizer, separator):
    """The fallback for tokenizers with no character offsets (decoding prefixes) cuts where offsets do."""
    from flan_builder.lm.scoring import _split_by_decoding, _split_by_offsets

    unicode_rows = [("Q: où est le café ?", ["ici", " là-bas", "ß"]), ("数字は?", ["一", "二つ"])]
    for prompt, options in [*ROWS, *unicode_rows]:
        context = prompt + separator
        texts = [context + option for option in options]
        expected = _split_by_offsets(tokenizer, texts, len(context))
        assert _split_by_decoding(tokenizer, texts, context) == expected


def _logprobs(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float().log_softmax(-1)[0]


def _summed(logprobs, ids, start):
    """Log-probability of ids[start:] given ids[:start], from one full forward pass."""
    return sum(float(logprobs[j - 1, ids[j]]) for j in range(start, len(ids)))


def test_acc_norm_is_not_decided_by_a_multi_token_separator(tiny_model, tokenizer):
    """A long separator scored as part of every option made acc_norm pick the longest option. Each
    score must be the option's own tokens only: checked against full forward passes."""
    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.hf import HFLM

    # 15 tokens, ending in a newline so that each option encodes as it does alone
    separator = "\n\n### The answer to the question above is written below this line\n"
    varied = [("Is the sky blue?", ["yes", "qzx vkjw pbq"]),
              ("Pick one.", ["zqvx kjw", "it is"]),
              ("Which word?", ["no", "xqzj", "kvwz pqxj zz"])]
    rows = [{"prompt": p, "input": p, "options": o, "answer_index": 0} for p, o in varied]
    samples = []
    scores = score_classification(HFLM(tiny_model, tokenizer, "tiny", batch_size=2), rows, separator, True,
                                  samples)
    old_rule, correct_norm = [], 0
    for row, sample in zip(rows, samples, strict=True):
        own, with_separator, counts = [], [], []
        for option in row["options"]:
            ids = tokenizer(row["prompt"] + separator + option)["input_ids"]
            alone = tokenizer(option)["input_ids"]
            assert ids[-len(alone):] == alone
            logprobs = _logprobs(tiny_model, ids)
            own.append(_summed(logprobs, ids, len(ids) - len(alone)))
            with_separator.append(_summed(logprobs, ids, len(tokenizer(row["prompt"])["input_ids"])))
            counts.append(len(alone))
        assert [o["logprob"] for o in sample["options"]] == pytest.approx(own, abs=1e-4)
        assert [o["tokens"] for o in sample["options"]] == counts
        chars = [len(o) for o in row["options"]]
        assert [o["chars"] for o in sample["options"]] == chars
        per_char = [s / n for s, n in zip(own, chars, strict=True)]
        assert sample["pred_norm"] == max(range(len(own)), key=per_char.__getitem__)
        correct_norm += sample["pred_norm"] == 0
        old = [s / n for s, n in zip(with_separator, chars, strict=True)]
        old_rule.append(max(range(len(old)), key=old.__getitem__))
    assert scores["acc_norm"] == pytest.approx(100 * correct_norm / len(rows))
    longest = [max(range(len(r["options"])), key=lambda k, r=r: len(r["options"][k])) for r in rows]
    assert old_rule == longest  # the separator decided it: the longest option, every row
    assert [s["pred_norm"] for s in samples] != longest


def test_an_empty_option_is_a_one_line_error_naming_the_row(tiny_model, tokenizer):
    from flan_builder.errors import FlanError
    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.hf import HFLM

    row = {"prompt": "Pick one.", "input": "Pick one.", "options": ["yes", ""], "answer_index": 0,
           "task": "toy", "template_id": "t1", "source_index": 7}
    with pytest.raises(FlanError, match="task toy, template t1, row 7: an option is empty"):
        score_classification(HFLM(tiny_model, tokenizer, "tiny"), [row], "\n\n", True)


# -- the " " protocol is lm-evaluation-harness's ---------------------------------------------------

def _rte_rows(n=4):
    """Real RTE validation rows with lm-eval's prompt (its super_glue/rte doc_to_text and choices)."""
    lines = (SHARED_DATA / "super_glue_rte" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines[:n]]
    return [{"input": f"{d['premise']}\nQuestion: {d['hypothesis']} True or False?\nAnswer:",
             "prompt": None, "options": ["True", "False"], "answer_index": d["label"], "source_index": i}
            for i, d in enumerate(docs)]


@requires_shared_data
def test_space_separator_gives_lm_evals_requests_against_a_full_forward_reference(tiny_model, tokenizer):
    """lm-eval's request is (prompt, " " + choice): encode the whole, split at len(encode(prompt)),
    one full forward pass. flan's scorer with separator " " must score exactly those tokens."""
    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.hf import HFLM

    rows = _rte_rows()
    samples = []
    score_classification(HFLM(tiny_model, tokenizer, "tiny"), rows, " ", False, samples)
    for row, sample in zip(rows, samples, strict=True):
        context = tokenizer(row["input"])["input_ids"]
        for option, scored in zip(row["options"], sample["options"], strict=True):
            whole = tokenizer(row["input"] + " " + option)["input_ids"]
            assert whole[: len(context)] == context
            assert scored["scored_tokens"] == [tokenizer.decode([t]) for t in whole[len(context):]]
            assert scored["logprob"] == pytest.approx(_summed(_logprobs(tiny_model, whole), whole,
                                                              len(context)), abs=1e-4)


@requires_shared_data
def test_space_separator_equals_lm_eval_loglikelihoods(tiny_model, tokenizer):
    """The same requests through lm-evaluation-harness itself (skipped where it is not installed)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM as LmEvalHFLM

    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.hf import HFLM

    rows = _rte_rows()
    samples = []
    score_classification(HFLM(tiny_model, tokenizer, "tiny"), rows, " ", False, samples)
    theirs = LmEvalHFLM(pretrained=tiny_model, tokenizer=tokenizer, batch_size=4)
    pairs = [(row["input"], " " + option) for row in rows for option in row["options"]]
    results = theirs.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=k)
                                    for k, pair in enumerate(pairs)], disable_tqdm=True)
    ours = [o for sample in samples for o in sample["options"]]
    for pair, (loglikelihood, _), mine in zip(pairs, results, ours, strict=True):
        assert mine["logprob"] == pytest.approx(loglikelihood, abs=1e-4)
        continuation = theirs._encode_pair(*pair)[1]
        assert mine["scored_tokens"] == [tokenizer.decode([t]) for t in continuation]


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

"""Proxy-tuning: exact against a plain reference, the identities that must hold, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, tiny_config

torch = pytest.importorskip("torch")

ROWS = [
    ("Premise: A man plays a guitar.\nHypothesis: A person makes music.\nDoes it follow?\n\nOPTIONS:\n"
     "- yes\n- it is not possible to tell\n- no", ["yes", "it is not possible to tell", "no"]),
    ("Is 'the cat sat' grammatical?", ["acceptable", "unacceptable"]),
    ("Pick the answer. Which is a fruit?", ["apple", "car", "stone", "a very long option with many words"]),
]
PROMPTS = ["Translate to French: the cat", "Q: What is two plus two?\nA:", "Write a long story about a dog"]


def _model_dir(root, tokenizer, seed, extra_rows=0):
    from transformers import LlamaForCausalLM, set_seed

    set_seed(seed)
    model = LlamaForCausalLM(tiny_config(len(tokenizer)))
    if extra_rows:  # padding rows past the tokenizer, as many released checkpoints have
        model.resize_token_embeddings(len(tokenizer) + extra_rows)
    folder = root / f"m{seed}-{extra_rows}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trio(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("proxy")
    return {"base": _model_dir(root, tokenizer, 0), "expert": _model_dir(root, tokenizer, 1),
            "anti": _model_dir(root, tokenizer, 2), "wide": _model_dir(root, tokenizer, 3, extra_rows=16)}


def _load(spec_or_name, batch_size="auto"):
    from flan_builder.lm.load import load_lm

    return load_lm(spec_or_name, batch_size)


def _proxy(base, expert, anti, alpha=1.0, level="token", batch_size="auto"):
    from flan_builder.lm.load import proxy_spec

    return _load(proxy_spec(base, expert, anti, alpha, level), batch_size)


def _requests():
    from flan_builder.lm.base import LoglikelihoodRequest

    return [LoglikelihoodRequest(prompt, "\n\n" + option) for prompt, options in ROWS for option in options]


def _reference_scores(models, tokenizer, alpha, width):
    """Full sequences through each model, logits combined, log_softmax, summed over the option."""
    out = []
    for prompt, options in ROWS:
        cut = len(tokenizer(prompt)["input_ids"])
        for option in options:
            ids = tokenizer(prompt + "\n\n" + option)["input_ids"]
            with torch.no_grad():
                logits = [m(input_ids=torch.tensor([ids])).logits[0, :, :width].float() for m in models]
            combined = logits[0] + alpha * (logits[1] - logits[2])
            logprobs = combined.log_softmax(-1)
            out.append(sum(float(logprobs[j - 1, ids[j]]) for j in range(cut, len(ids))))
    return out


def test_token_level_scores_equal_a_full_sequence_reference(trio, tokenizer):
    proxy = _proxy(trio["base"], trio["expert"], trio["wide"], alpha=0.7, batch_size=2)
    assert proxy.width == len(tokenizer)  # the wide model's padding rows are cut off
    models = [proxy.base.model, proxy.expert.model, proxy.anti.model]
    reference = _reference_scores(models, tokenizer, 0.7, proxy.width)
    assert proxy.loglikelihood(_requests()) == pytest.approx(reference, abs=1e-4)


def _greedy(lm, prompts=PROMPTS, n=12):
    from flan_builder.lm.base import GenerationRequest

    return lm.generate([GenerationRequest(p, n) for p in prompts])


def test_alpha_zero_is_the_base_model_exactly(trio):
    base = _load(trio["base"])
    proxy = _proxy(trio["base"], trio["expert"], trio["anti"], alpha=0.0)
    assert proxy.loglikelihood(_requests()) == pytest.approx(base.loglikelihood(_requests()), abs=1e-5)
    assert _greedy(proxy) == _greedy(base)


def test_expert_equal_to_anti_leaves_the_base_unchanged(trio):
    base = _load(trio["base"])
    proxy = _proxy(trio["base"], trio["expert"], trio["expert"], alpha=1.0)
    assert proxy.loglikelihood(_requests()) == pytest.approx(base.loglikelihood(_requests()), abs=1e-5)
    assert _greedy(proxy) == _greedy(base)


def test_base_equal_to_anti_gives_the_expert_at_alpha_one(trio):
    expert = _load(trio["expert"])
    proxy = _proxy(trio["anti"], trio["expert"], trio["anti"], alpha=1.0)
    assert proxy.loglikelihood(_requests()) == pytest.approx(expert.loglikelihood(_requests()), abs=1e-5)
    assert _greedy(proxy) == _greedy(expert)


def test_batched_generation_keeps_each_models_cache_right(trio, tokenizer):
    """Left-padded batches with cached helpers give what a cache-free, one-row-at-a-time loop gives."""
    proxy = _proxy(trio["base"], trio["expert"], trio["anti"], alpha=1.5, batch_size=3)
    batched = _greedy(proxy, n=10)
    models = [proxy.base.model, proxy.expert.model, proxy.anti.model]
    for prompt, answer in zip(PROMPTS, batched, strict=True):
        ids = tokenizer(prompt)["input_ids"]
        start = len(ids)
        for _ in range(10):
            with torch.no_grad():
                logits = [m(input_ids=torch.tensor([ids])).logits[0, -1].float() for m in models]
            ids.append(int((logits[0] + 1.5 * (logits[1] - logits[2])).argmax()))
        assert answer == tokenizer.decode(ids[start:], skip_special_tokens=True).strip()


def test_sampling_and_stop_strings_run_through_generate(trio):
    from flan_builder.lm.base import GenerationRequest

    proxy = _proxy(trio["base"], trio["expert"], trio["anti"], alpha=1.0)
    torch.manual_seed(0)
    sampled = proxy.generate([GenerationRequest(p, 8, temperature=0.8, top_p=0.9) for p in PROMPTS])
    assert len(sampled) == 3 and all(isinstance(s, str) for s in sampled)
    full = _greedy(proxy, n=16)[0]
    if len(full) > 3:  # stop at a piece of the greedy answer: the answer ends before it
        stop = full[2:4]
        cut = proxy.generate([GenerationRequest(PROMPTS[0], 16, stop=(stop,))])[0]
        assert stop not in cut and full.startswith(cut)


def test_sequence_level_combines_each_models_own_scores(trio):
    spec_models = [_load(trio[k]) for k in ("base", "expert", "anti")]
    parts = [m.loglikelihood(_requests()) for m in spec_models]
    proxy = _proxy(trio["base"], trio["expert"], trio["anti"], alpha=0.5, level="sequence")
    expected = [m + 0.5 * (e - a) for m, e, a in zip(*parts, strict=True)]
    assert proxy.loglikelihood(_requests()) == pytest.approx(expected, abs=1e-5)
    from flan_builder.errors import FlanError

    with pytest.raises(FlanError, match="sequence-level proxy-tuning only scores options"):
        _greedy(proxy)


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory, tokenizer):
    """A model whose tokenizer has two more tokens: same size-ish, not the same vocabulary."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("other-tok")
    other = AutoTokenizer.from_pretrained(_model_dir(root, tokenizer, 5))
    other.add_tokens(["<new_a>", "<new_b>"])
    return _model_dir(root, other, 6)


def test_token_level_refuses_different_tokenizers_and_sequence_level_accepts_them(trio,
                                                                                  other_tokenizer_model):
    from flan_builder.errors import FlanError

    with pytest.raises(FlanError, match="needs one tokenizer.*vocabularies differ.*--proxy-level sequence"):
        _proxy(other_tokenizer_model, trio["expert"], trio["anti"])
    proxy = _proxy(other_tokenizer_model, trio["expert"], trio["anti"], level="sequence")
    assert len(proxy.loglikelihood(_requests())) == len(_requests())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flan_builder.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "TQDM_DISABLE": "1"})


def test_flan_generate_with_a_proxy_and_bad_input(trio, tmp_path, other_tokenizer_model):
    out = tmp_path / "answers.jsonl"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: one?\\nA:\nQ: two?\n", encoding="utf-8")
    done = _cli("generate", "--model", trio["base"], "--expert", trio["expert"], "--anti", trio["anti"],
                "--alpha", "0.8", "--prompts", str(prompts), "--max-new-tokens", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and '"prompt": "Q: one?\\nA:"' in lines[0]
    cases = [
        (["--alpha", "-1", "--expert", trio["expert"], "--anti", trio["anti"]], "must be a number >= 0"),
        (["--alpha", "x", "--expert", trio["expert"], "--anti", trio["anti"]], "is not a number"),
        (["--expert", trio["expert"]], "--expert was given without --anti"),
        (["--anti", trio["anti"]], "--anti was given without --expert"),
        (["--expert", other_tokenizer_model, "--anti", trio["anti"]], "vocabularies differ"),
        (["--expert", str(tmp_path / "missing"), "--anti", trio["anti"]], "not found"),
    ]
    for extra, message in cases:
        done = _cli("generate", "--model", trio["base"], "--prompt", "hi", *extra)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], (extra, done.stderr[-1500:])

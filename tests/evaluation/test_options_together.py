"""With and without OPTIONS scored in one call (the input they share runs once on the trie): the same
scores as two separate calls, which the tests in tests/lm check against full forward passes."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SHARED_DATA, requires_shared_data, tiny_config

torch = pytest.importorskip("torch")


def _rte_rows(n: int) -> list[dict]:
    """Real RTE validation rows laid out as a FLAN template does: the input, then the OPTIONS suffix."""
    lines = (SHARED_DATA / "super_glue_rte" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines[:n]):
        doc = json.loads(line)
        text = f"{doc['premise']}\n\nCan we conclude that \"{doc['hypothesis']}\"?"
        options = ["yes", "no"]
        rows.append({"input": text, "prompt": text + "\n\nOPTIONS:\n- " + "\n- ".join(options),
                     "options": options, "answer_index": doc["label"], "source_index": i})
    return rows


@requires_shared_data
def test_both_settings_in_one_call_equal_two_separate_calls(tokenizer):
    from transformers import LlamaForCausalLM, set_seed

    from flan_builder.evaluation.scorers import (
        _requests,
        score_classification,
        score_classification_settings,
    )
    from flan_builder.lm.hf import HFLM

    set_seed(3)
    lm = HFLM(LlamaForCausalLM(tiny_config(len(tokenizer))).eval(), tokenizer, "tiny", batch_size=4)
    rows = _rte_rows(6)
    kept = {True: [], False: []}
    together = score_classification_settings(lm, rows, "\n\n", (True, False), kept)
    for use in (True, False):
        alone: list[dict] = []
        assert together[use] == score_classification(lm, rows, "\n\n", use, alone)
        for ours, theirs in zip(kept[use], alone, strict=True):
            assert ours["prompt"] == theirs["prompt"]
            assert [o["logprob"] for o in ours["options"]] == \
                pytest.approx([o["logprob"] for o in theirs["options"]], abs=1e-4)
            assert [o["scored_tokens"] for o in ours["options"]] == \
                [o["scored_tokens"] for o in theirs["options"]]
    # one trie per held-out row, holding both prompts: the input's tokens once
    requests = [r for use in (True, False) for r in _requests(rows, "\n\n", use, grouped=True)]
    merged, _ = lm.encode(requests)
    apart, _ = lm.encode([r for use in (True, False) for r in _requests(rows, "\n\n", use)])
    assert len(merged) == len(rows) and len(apart) == 2 * len(rows)
    saved = sum(len(r.tree.tokens) for r in apart) - sum(len(r.tree.tokens) for r in merged)
    shared_input = sum(len(tokenizer(row["input"])["input_ids"]) for row in rows)
    assert saved >= shared_input - len(rows)  # at most a boundary token per row is not shared


def test_flan_eval_options_both_matches_each_setting_alone(tmp_path, tiny_model_dir, toy_build, monkeypatch):
    """`--options both` scores each template once with both settings; records and samples equal those
    of two runs with one setting each."""
    from flan_builder.evaluation import evaluator as run
    from flan_builder.evaluation.suite import EvalConfig

    def config(name, options):
        return EvalConfig(models=[str(tiny_model_dir)], data=toy_build, out=tmp_path / name, options=options,
                          log_samples=True)

    joint_calls = []
    original = run.score_classification_settings
    monkeypatch.setattr(run, "score_classification_settings",
                        lambda *a, **k: joint_calls.append(a[3]) or original(*a, **k))
    both = run.evaluate_models(config("both", (True, False)))
    templates = {(r["task"], r["template"]) for r in both["records"]}
    assert joint_calls == [(True, False)] * len(templates)
    apart = run.evaluate_models(config("with", (True,)))["records"] + \
        run.evaluate_models(config("without", (False,)))["records"]
    assert len(both["records"]) == len(apart) == 2 * len(templates)
    key = lambda r: (r["task"], r["template"], r["options"])  # noqa: E731
    alone = {key(r): r for r in apart}
    for record in both["records"]:
        other = alone[key(record)]
        assert record["scores"] == other["scores"]
        ours = (tmp_path / "both" / record["samples"]).read_text().splitlines()
        folder = "with" if record["options"] else "without"
        theirs = (tmp_path / folder / other["samples"]).read_text().splitlines()
        for a, b in zip(map(json.loads, ours), map(json.loads, theirs), strict=True):
            assert (a["prompt"], a["pred"], a["pred_norm"]) == (b["prompt"], b["pred"], b["pred_norm"])
            assert [o["logprob"] for o in a["options"]] == \
                pytest.approx([o["logprob"] for o in b["options"]], abs=1e-4)

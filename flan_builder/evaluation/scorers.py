"""Scoring a (task, template) group of rows with a language model: one function per output type.

Both go through the LM interface only (``loglikelihood`` / ``generate``), so a plain model, a
proxy-tuned one or a remote endpoint is scored the same way.
"""

from __future__ import annotations

from typing import Any

from flan_builder.evaluation.metrics import metric as metric_facts
from flan_builder.lm.base import LM, GenerationRequest, LoglikelihoodRequest


def option_loglikelihoods(lm: LM, rows: list[dict[str, Any]], separator: str,
                          use_options: bool) -> list[list[float]]:
    """Each row's summed log-likelihood of each of its options after its prompt."""
    requests = [LoglikelihoodRequest(row["prompt"] if use_options else row["input"], separator + option)
                for row in rows for option in row["options"]]
    flat = lm.loglikelihood(requests)
    out, start = [], 0
    for row in rows:
        out.append(flat[start: start + len(row["options"])])
        start += len(row["options"])
    return out


def score_classification(lm: LM, rows: list[dict[str, Any]], separator: str,
                         use_options: bool) -> dict[str, Any]:
    """Rank classification: acc (summed log-likelihood) and acc_norm (per character), as lm-eval does."""
    correct = correct_norm = 0
    for row, option_scores in zip(rows, option_loglikelihoods(lm, rows, separator, use_options), strict=True):
        # per character of the option itself, as lm-evaluation-harness normalises acc_norm
        norm = [s / max(len(o), 1) for s, o in zip(option_scores, row["options"], strict=True)]
        gold = row["answer_index"]
        correct += int(max(range(len(option_scores)), key=option_scores.__getitem__) == gold)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == gold)
    n = len(rows)
    return {"acc": 100 * correct / n, "acc_norm": 100 * correct_norm / n, "n": n}


def score_generation(lm: LM, rows: list[dict[str, Any]], evaluation: dict[str, Any], use_options: bool,
                     from_hub: bool) -> dict[str, Any]:
    """Greedy decoding, then the task's metric (a shipped ``evaluate`` module, or the Hub's)."""
    import evaluate

    facts = metric_facts(evaluation["metric"])
    from_hub = from_hub and facts.hub is not None
    stop = tuple(evaluation.get("stop") or ())
    answers = lm.generate([GenerationRequest(row["prompt"] if use_options else row["input"],
                                             evaluation["max_new_tokens"], stop) for row in rows])
    module = evaluate.load(facts.hub if from_hub else str(facts.path))
    references = [row["references"] or [row["target"]] for row in rows]
    if from_hub and facts.hub == "squad":
        result = module.compute(
            predictions=[{"id": str(i), "prediction_text": p} for i, p in enumerate(answers)],
            references=[{"id": str(i), "answers": {"text": r, "answer_start": [0] * len(r)}}
                        for i, r in enumerate(references)])
    else:
        result = module.compute(predictions=answers, references=references)
    scores = {key: float(result[key]) for key in facts.keys if key in result}
    return {**scores, "n": len(rows), "examples": answers[:3]}

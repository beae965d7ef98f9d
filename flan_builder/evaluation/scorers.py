"""Scoring a (task, template) group of rows with a language model: one function per output type.

Both go through the LM interface only (``loglikelihood`` / ``generate``), so a plain model, a
proxy-tuned one or a remote endpoint is scored the same way.
"""

from __future__ import annotations

from typing import Any

from flan_builder.errors import FlanError
from flan_builder.evaluation.metrics import metric as metric_facts
from flan_builder.lm.base import LM, GenerationRequest, LoglikelihoodRequest


def _context(row: dict[str, Any], separator: str, use_options: bool) -> str:
    """What the options are scored after: the prompt (with or without OPTIONS), then the separator."""
    return (row["prompt"] if use_options else row["input"]) + separator


def _requests(rows: list[dict[str, Any]], separator: str, use_options: bool,
              grouped: bool = False) -> list[LoglikelihoodRequest]:
    """One request per option; ``grouped``: each carries its row's number, so a row's requests under
    several OPTIONS settings are scored together (the input they share runs once)."""
    for row in rows:
        if not all(row["options"]):  # no tokens to score: every tool would rank it arbitrarily
            raise FlanError(f"task {row.get('task')}, template {row.get('template_id')}, row "
                            f"{row.get('source_index')}: an option is empty, so it cannot be scored; "
                            "give every option some text (or drop the row)")
    return [LoglikelihoodRequest(_context(row, separator, use_options), option, i if grouped else None)
            for i, row in enumerate(rows) for option in row["options"]]


def _per_row(rows: list[dict[str, Any]], flat: list[Any]) -> list[list[Any]]:
    out, start = [], 0
    for row in rows:
        out.append(flat[start: start + len(row["options"])])
        start += len(row["options"])
    return out


def option_loglikelihoods(lm: LM, rows: list[dict[str, Any]], separator: str,
                          use_options: bool) -> list[list[float]]:
    """Each row's summed log-likelihood of each option's own tokens after its prompt and the separator."""
    return _per_row(rows, lm.loglikelihood(_requests(rows, separator, use_options)))


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal scores, as numpy's


def score_classification(lm: LM, rows: list[dict[str, Any]], separator: str, use_options: bool,
                         samples: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rank classification: acc (summed log-likelihood) and acc_norm (per character), as lm-eval does.

    With ``samples`` (a list), one record per row is appended: the prompt, each option's score,
    scored tokens and characters, both predictions and the gold answer (lm-eval's --log_samples).
    """
    return score_classification_settings(lm, rows, separator, (use_options,),
                                         None if samples is None else {use_options: samples})[use_options]


def score_classification_settings(lm: LM, rows: list[dict[str, Any]], separator: str,
                                  settings: tuple[bool, ...],
                                  samples: dict[bool, list[dict[str, Any]]] | None = None,
                                  ) -> dict[bool, dict[str, Any]]:
    """``score_classification`` for several OPTIONS settings (with, without) of the same rows in one
    scoring call: the prompt with OPTIONS begins with the input, so that input runs once."""
    requests = [r for use in settings for r in _requests(rows, separator, use, grouped=len(settings) > 1)]
    flat = lm.loglikelihood(requests)
    tokens = (lm.continuation_tokens(requests) or [None] * len(requests)) if samples is not None else None
    out, start = {}, 0
    for use in settings:
        end = start + sum(len(row["options"]) for row in rows)
        out[use] = _classification(rows, separator, use, _per_row(rows, flat[start:end]),
                                   None if tokens is None else _per_row(rows, tokens[start:end]),
                                   None if samples is None else samples[use])
        start = end
    return out


def _classification(rows: list[dict[str, Any]], separator: str, use_options: bool, scores: list[list[float]],
                    tokens: list[list[Any]] | None, samples: list[dict[str, Any]] | None) -> dict[str, Any]:
    correct = correct_norm = 0
    for i, (row, option_scores) in enumerate(zip(rows, scores, strict=True)):
        # per character of the option itself, as lm-evaluation-harness normalises acc_norm
        norm = [s / max(len(o), 1) for s, o in zip(option_scores, row["options"], strict=True)]
        gold, pred, pred_norm = row["answer_index"], _argmax(option_scores), _argmax(norm)
        correct += int(pred == gold)
        correct_norm += int(pred_norm == gold)
        if samples is not None:
            samples.append({
                "source_index": row.get("source_index"), "prompt": _context(row, "", use_options),
                "separator": separator,
                "options": [{"option": option, "logprob": score, "chars": len(option),
                             "tokens": None if scored is None else len(scored), "scored_tokens": scored}
                            for option, score, scored in zip(row["options"], option_scores, tokens[i],
                                                             strict=True)],
                "gold": gold, "pred": pred, "pred_norm": pred_norm,
                "acc": int(pred == gold), "acc_norm": int(pred_norm == gold)})
    n = len(rows)
    return {"acc": 100 * correct / n, "acc_norm": 100 * correct_norm / n, "n": n}


def score_generation(lm: LM, rows: list[dict[str, Any]], evaluation: dict[str, Any], use_options: bool,
                     from_hub: bool, samples: list[dict[str, Any]] | None = None, *, cot: str = "none",
                     separator: str = "\n\n") -> dict[str, Any]:
    """Greedy decoding, then the task's metric (a shipped ``evaluate`` module, or the Hub's).

    With ``cot="zero-shot"`` a task whose metric reads answers out of reasoning (flan_cot) is decoded
    in Kojima et al.'s two stages (evaluation/cot.py; ``separator`` sits between prompt and trigger).
    With ``samples`` (a list), one record per row is appended: the prompt, the answer, the references,
    and for answer-reading metrics the answer read and whether it was right or unparsable.
    """
    import evaluate

    facts = metric_facts(evaluation["metric"])
    from_hub = from_hub and facts.hub is not None
    stop = tuple(evaluation.get("stop") or ())
    prompts = [row["prompt"] if use_options else row["input"] for row in rows]
    references = [row["references"] or [row["target"]] for row in rows]
    if cot == "zero-shot" and facts.extracts_answer:
        from flan_builder.evaluation.cot import zero_shot_cot

        chains = zero_shot_cot(lm, prompts, references, separator, evaluation)
        answers, shown = [c.prediction for c in chains], [c.text for c in chains]
    else:
        answers = lm.generate([GenerationRequest(p, evaluation["max_new_tokens"], stop) for p in prompts])
        shown = answers
    module = evaluate.load(facts.hub if from_hub else str(facts.path))
    if from_hub and facts.hub == "squad":
        result = module.compute(
            predictions=[{"id": str(i), "prediction_text": p} for i, p in enumerate(answers)],
            references=[{"id": str(i), "answers": {"text": r, "answer_start": [0] * len(r)}}
                        for i, r in enumerate(references)])
    else:
        result = module.compute(predictions=answers, references=references)
    if samples is not None:
        for row, answer, text, refs in zip(rows, answers, shown, references, strict=True):
            sample = {"source_index": row.get("source_index"), "prompt": _context(row, "", use_options),
                      "answer": text, "references": refs}
            if facts.extracts_answer:
                from flan_builder.evaluation.answers import read_answer

                read, verdict = read_answer(answer, refs)
                sample.update(extracted=read, correct=verdict is True, unparsable=verdict is None)
            samples.append(sample)
    scores = {key: float(result[key]) for key in facts.keys if key in result}
    return {**scores, "n": len(rows), "examples": shown[:3]}

"""What lm-evaluation-harness calls back into when it scores a generation task from ``flan export lm-eval``.

The exported ``utils.py`` beside each generation task's YAML names these through ``!function``:
``process_results`` keeps each row's answer with its references, and one aggregation per metric key
runs flan eval's own metric module (``evaluation/metrics/<name>``, loaded by path, offline) over the
whole task, exactly as ``flan eval`` does. lm-eval's built-in ``exact_match`` does not normalise
like SQuAD, it has no token F1, ROUGE or RMSE, and its corpus BLEU takes one reference, so only
this route gives the same numbers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flan_builder.evaluation.metrics import metric as metric_facts

Item = tuple[str, list[str]]


def process_results(metric: str, doc: dict[str, Any], results: list[str]) -> dict[str, Item]:
    """Every key of ``metric`` gets (answer, references); the score is made over all rows at the end."""
    # flan eval strips each answer after cutting it at the stop strings (lm-eval cuts at `until`)
    answer = results[0].strip()
    references = [str(r) for r in doc["references"]]
    return {key: (answer, references) for key in metric_facts(metric).keys}


@cache
def _module(metric: str) -> Any:
    import evaluate

    return evaluate.load(str(metric_facts(metric).path))


# lm-eval calls one aggregation per key with the same items: the module runs once for all of them.
_last: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}


def aggregate(metric: str, key: str, items: list[Item]) -> float:
    """``key`` of flan eval's ``metric`` module over every (answer, references) of a task."""
    frozen = tuple((answer, tuple(refs)) for answer, refs in items)
    cached = _last.get(metric)
    if cached is None or cached[0] != frozen:
        result = _module(metric).compute(predictions=[answer for answer, _ in items],
                                         references=[list(refs) for _, refs in items])
        _last[metric] = cached = (frozen, result)
    return float(cached[1][key])

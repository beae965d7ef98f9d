"""Numbers read out of generated text, and the one regression scorer (torch-free).

Rule for an answer with no number (used by ``flan eval``'s ``flan_regression`` metric and by
``flan lift``): it is counted in ``unparsable`` and scored as the constant ``fallback``
prediction, the mean of the training targets when the caller knows them (``flan lift``), else
the mean of the references (``flan eval`` sees no training rows). It is never dropped from
the denominator, and the count is always reported beside the error.
"""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_number(text: str) -> float | None:
    """The first number in a generated answer ('151', '151.5 points', ' -3'), else None."""
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else None


def score_numbers(truth: list[float], answers: list[str], fallback: float | None = None) -> dict[str, float]:
    """RMSE, MAE and RAE of the first number in each answer; unparsable ones scored as ``fallback``.

    RAE is the summed absolute error over that of always predicting ``fallback`` (1.0 = no better
    than the constant guess). ``fallback`` defaults to the mean of ``truth``.
    """
    if fallback is None:
        fallback = sum(truth) / max(len(truth), 1)
    parsed = [parse_number(a) for a in answers]
    predicted = [fallback if p is None else p for p in parsed]
    return {**errors(truth, predicted, fallback), "unparsable": sum(p is None for p in parsed)}


def errors(truth: list[float], predicted: list[float], reference: float) -> dict[str, float]:
    """RMSE, MAE, and RAE relative to always predicting ``reference``."""
    n = max(len(truth), 1)
    diffs = [p - t for p, t in zip(predicted, truth, strict=True)]
    constant = sum(abs(reference - t) for t in truth)
    return {"rmse": math.sqrt(sum(d * d for d in diffs) / n), "mae": sum(abs(d) for d in diffs) / n,
            "rae": sum(abs(d) for d in diffs) / constant if constant else float("nan")}

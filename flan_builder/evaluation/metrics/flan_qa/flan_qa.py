"""Exact match and token F1 for QA, SQuAD-style normalisation; any reference counts (the best)."""

import re
import string
from collections import Counter

import datasets
import evaluate

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class FlanQA(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Exact match and token F1 (SQuAD normalisation), best over the references.",
            citation="",
            inputs_description="predictions: list of str; references: list of list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        em = f1 = 0.0
        for prediction, refs in zip(predictions, references, strict=True):
            em += max(float(normalize(prediction) == normalize(r)) for r in refs)
            f1 += max(token_f1(prediction, r) for r in refs)
        n = max(len(predictions), 1)
        return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}

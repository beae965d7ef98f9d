"""ROUGE-1/2/L F-measure (rouge-score, stemming on), best over the references."""

import datasets
import evaluate
from rouge_score import rouge_scorer


class FlanRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE F-measure via rouge-score, best over the references.",
            citation="Lin, 2004",
            inputs_description="predictions: list of str; references: list of list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        kinds = ("rouge1", "rouge2", "rougeL")
        scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
        totals = dict.fromkeys(kinds, 0.0)
        for prediction, refs in zip(predictions, references, strict=True):
            for kind in kinds:
                totals[kind] += max(scorer.score(r, prediction)[kind].fmeasure for r in refs)
        n = max(len(predictions), 1)
        return {kind: 100 * value / n for kind, value in totals.items()}

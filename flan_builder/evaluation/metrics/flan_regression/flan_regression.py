"""RMSE and MAE of numbers read from generated text (tabular regression written as generation).

The first number in each prediction is the answer ('151', '151.5 points', ' -3'). An answer with
no number is counted in ``unparsable`` and scored as the mean of the references, the best a
constant guess can do, so it stays in the denominator without being rewarded for silence.
"""

import math

import datasets
import evaluate

from flan_builder.evaluation.run import parse_number  # the same reading as `flan lift`


class FlanRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="RMSE and MAE of the first number in each prediction against the first reference.",
            citation="",
            inputs_description="predictions: list of str; references: list of list of str (a number first)",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        truth = [float(refs[0]) for refs in references]
        fallback = sum(truth) / max(len(truth), 1)
        guesses = [parse_number(p) for p in predictions]
        errors = [(fallback if g is None else g) - t for g, t in zip(guesses, truth, strict=True)]
        n = max(len(errors), 1)
        return {"rmse": math.sqrt(sum(e * e for e in errors) / n), "mae": sum(abs(e) for e in errors) / n,
                "unparsable": sum(g is None for g in guesses)}

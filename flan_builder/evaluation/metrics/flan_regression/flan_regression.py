"""RMSE and MAE of numbers read from generated text (tabular regression written as generation).

The first number in each prediction is the answer ('151', '151.5 points', ' -3'). An answer with
no number is counted in ``unparsable`` and scored as the mean of the references, the best a
constant guess can do, so it stays in the denominator without being rewarded for silence
(the rule of ``flan_builder.evaluation.numbers``, shared with ``flan lift``).
"""

import datasets
import evaluate

from flan_builder.evaluation.numbers import score_numbers


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
        return score_numbers([float(refs[0]) for refs in references], list(predictions))

"""Exact match of the answer a chain of thought ends in (the rules of ``flan_builder.evaluation.answers``).

The answer is read after the first "the answer is" (FLAN v2's variants, Kojima et al.'s) or "####"
(GSM8K); numbers compare as numbers, option letters as letters, other answers as normalised text.
A generation with no readable answer counts as wrong and is counted in ``unparsable``.
"""

import datasets
import evaluate

from flan_builder.evaluation.answers import score_answers


class FlanCot(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Exact match of the answer read after 'the answer is' / '####'; unparsable counted.",
            citation="",
            inputs_description="predictions: list of str (reasoning, then the answer); references: list of "
                               "list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return score_answers(list(predictions), [list(r) for r in references])

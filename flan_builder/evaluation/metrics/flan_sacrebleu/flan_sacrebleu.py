"""Corpus BLEU and chrF (sacrebleu defaults); references may differ in number per row."""

import datasets
import evaluate
import sacrebleu


class FlanSacreBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="sacrebleu corpus BLEU and chrF.",
            citation="Post, 2018",
            inputs_description="predictions: list of str; references: list of list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        width = max(len(r) for r in references)
        # sacrebleu wants one stream per reference position; pad short lists with their first
        streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
        return {"bleu": sacrebleu.corpus_bleu(predictions, streams).score,
                "chrf": sacrebleu.corpus_chrf(predictions, streams).score}

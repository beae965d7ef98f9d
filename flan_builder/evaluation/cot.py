"""Zero-shot chain of thought for ``flan eval --cot zero-shot`` (Kojima et al. 2022).

Two generations per row, as the paper does. First the reasoning: the prompt, the separator and
"Let's think step by step." as the start of the answer, decoded with the task's own budget and
stop strings. Then the answer: that text, the reasoning, and "Therefore, the answer is" (for a
number, "Therefore, the answer (arabic numerals) is"), decoded for a few tokens up to the end of
the line. The scored prediction is the second part only, read by the task's answer-extracting
metric (``flan_cot``); an empty or formless answer is unparsable, counted, and wrong.

Only tasks whose metric reads answers out of reasoning take part; the others are scored as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flan_builder.evaluation.answers import reference_number
from flan_builder.lm.base import LM, GenerationRequest

COT_MODES = ("none", "zero-shot")
TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer is"
NUMBER_TRIGGER = "Therefore, the answer (arabic numerals) is"
ANSWER_TOKENS = 24  # the answer stage writes a number, a letter or a few words


@dataclass(frozen=True)
class ZeroShotCot:
    """One row's two stages: what the model wrote and the text the metric reads."""

    reasoning_prompt: str  # prompt, separator, "Let's think step by step."
    reasoning: str
    trigger: str  # the answer trigger
    answer: str

    @property
    def answer_prompt(self) -> str:
        return f"{self.reasoning_prompt} {self.reasoning}\n{self.trigger}"

    @property
    def prediction(self) -> str:
        """What is scored: the answer trigger, then the model's answer (so the marker is always there)."""
        return f"{self.trigger} {self.answer}"

    @property
    def text(self) -> str:
        """Everything after the prompt and separator, triggers included (for samples)."""
        return f"{TRIGGER} {self.reasoning}\n{self.prediction}"


def answer_trigger(references: list[str]) -> str:
    """Kojima et al.'s answer trigger; numbers get '(arabic numerals)' as the paper's arithmetic tasks do."""
    numeric = bool(references) and all(reference_number(str(r)) is not None for r in references)
    return NUMBER_TRIGGER if numeric else ANSWER_TRIGGER


def zero_shot_cot(lm: LM, prompts: list[str], references: list[list[str]], separator: str,
                  evaluation: dict[str, Any]) -> list[ZeroShotCot]:
    """Reasoning after the trigger, then the answer after the answer trigger, for every prompt."""
    stop = tuple(evaluation.get("stop") or ())
    first = [prompt + separator + TRIGGER for prompt in prompts]
    reasoning = lm.generate([GenerationRequest(p, evaluation["max_new_tokens"], stop) for p in first])
    rows = [ZeroShotCot(p, r, answer_trigger(refs), "")
            for p, r, refs in zip(first, reasoning, references, strict=True)]
    answers = lm.generate([GenerationRequest(row.answer_prompt, ANSWER_TOKENS, ("\n",)) for row in rows])
    return [ZeroShotCot(row.reasoning_prompt, row.reasoning, row.trigger, answer)
            for row, answer in zip(rows, answers, strict=True)]


def check_cot(mode: str, evaluations: dict[str, dict[str, Any]], data: Any) -> None:
    """``--cot zero-shot`` needs a held-out task scored by reading an answer out of reasoning."""
    from flan_builder.errors import FlanError
    from flan_builder.evaluation.metrics import metric

    if mode not in COT_MODES:
        raise FlanError(f"--cot {mode!r}: give one of {', '.join(COT_MODES)}")
    if mode != "none" and not any(e["output_type"] == "generate_until" and metric(e["metric"]).extracts_answer
                                  for e in evaluations.values()):
        raise FlanError(f"--cot {mode}: no held-out task of {data} reads its answer out of reasoning "
                        f"(metric flan_cot: the cot and math clusters; here: "
                        f"{', '.join(sorted(evaluations))}); "
                        "build with --heldout cot or --heldout math, or drop --cot")

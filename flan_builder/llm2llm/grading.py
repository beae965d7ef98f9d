"""Which rows the student gets right: rank classification for tasks with options, greedy decoding
and a correctness rule for generation tasks (the number after ``####`` for math, a normalised
exact match otherwise). An answer that cannot be parsed is wrong.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any

from flan_builder.evaluation.numbers import parse_number
from flan_builder.llm2llm.task_rows import TaskFormat
from flan_builder.templating import DEFAULT_SEPARATOR, TaskRenderer


def render_rows(
    fmt: TaskFormat, rows: list[dict[str, Any]], with_options: bool, split: str
) -> list[dict[str, Any]]:
    """Each raw row rendered with the format's templates (the evaluator's row shape), row-major."""
    renderer = TaskRenderer(fmt.spec, with_options=with_options)
    out = []
    for index, row in enumerate(rows):
        for example in renderer.render_all(row, list(fmt.templates), split=split, row_index=index):
            out.append({**dataclasses.asdict(example), "row": index})
    return out


def final_number(text: str) -> float | None:
    """A GSM8K-style answer's number: after the last ``####``, else the last number in the text."""
    if "####" in text:
        return parse_number(text.rsplit("####", 1)[1])
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return parse_number(numbers[-1]) if numbers else None


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def is_correct(kind: str, answer: str, references: list[str]) -> bool:
    """The correctness rule of a generation task's answer."""
    if kind == "math":
        got = final_number(answer)
        return got is not None and any(final_number(r) == got for r in references)
    return any(normalise(answer) == normalise(r) for r in references)


def grade(
    lm: Any, fmt: TaskFormat, rendered: list[dict[str, Any]], with_options: bool, evaluation: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per rendered row: the student's answer (text), and whether it is right."""
    from flan_builder.evaluation.scorers import option_loglikelihoods
    from flan_builder.lm.base import GenerationRequest

    if fmt.kind in ("classification", "multiple_choice"):
        scores = option_loglikelihoods(lm, rendered, DEFAULT_SEPARATOR, with_options)
        out = []
        for row, option_scores in zip(rendered, scores, strict=True):
            best = max(range(len(option_scores)), key=option_scores.__getitem__)
            out.append(
                {
                    "row": row["row"],
                    "template": row["template_id"],
                    "answer": row["options"][best],
                    "correct": best == row["answer_index"],
                }
            )
        return out
    answers = lm.generate(
        [
            GenerationRequest(
                row["prompt"] if with_options else row["input"],
                evaluation["max_new_tokens"],
                tuple(evaluation["stop"]),
            )
            for row in rendered
        ]
    )
    return [
        {
            "row": row["row"],
            "template": row["template_id"],
            "answer": answer,
            "correct": is_correct(fmt.kind, answer, row["references"] or [row["target"]]),
        }
        for row, answer in zip(rendered, answers, strict=True)
    ]


def accuracy(graded: list[dict[str, Any]]) -> float:
    """Percent correct over every (row, template) pair."""
    return 100 * sum(g["correct"] for g in graded) / max(len(graded), 1)


def wrong_rows(graded: list[dict[str, Any]]) -> dict[int, str]:
    """Row index -> the student's answer, for rows it gets wrong under any template in use."""
    wrong: dict[int, str] = {}
    for g in graded:
        if not g["correct"]:
            wrong.setdefault(g["row"], g["answer"])
    return wrong

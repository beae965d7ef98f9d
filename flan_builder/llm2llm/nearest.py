"""The perfect-teacher control: instead of a model, real train rows held aside from the seed.

For a wrong seed example it "writes" the held-aside row of the same answer nearest to it in
TF-IDF space (not given before), in the format a teacher answers in, so the rest of the loop
(parsing, dedup, training) is the same. It shows what the loop can do when every new example
is correct and on-distribution.
"""

from __future__ import annotations

from typing import Any

from flan_builder.llm2llm.dedup import example_text
from flan_builder.llm2llm.task_rows import TaskFormat
from flan_builder.llm2llm.teacher import Answer, Example, options_of


def as_teacher_text(fmt: TaskFormat, row: dict[str, Any]) -> str:
    """A raw row written the way the teacher prompts ask for it."""
    lines = [f"{name}: {row.get(name, '')}" for name in fmt.inputs]
    return "\n".join([*lines, f"answer: {fmt.answer_text(row, options_of(fmt, row))}"])


class NearestTeacher:
    """Answers with the nearest unused held-aside row that has the same answer."""

    identity = "nearest-neighbour (held-aside real rows)"
    exhausted: str | None = None

    def __init__(self, fmt: TaskFormat, pool: list[dict[str, Any]]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.fmt, self.pool = fmt, pool
        self.vectorizer = TfidfVectorizer(sublinear_tf=True)
        self.matrix = (
            self.vectorizer.fit_transform([example_text(r, fmt.inputs) for r in pool]) if pool else None
        )
        self.used: set[int] = set()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def _same_answer(self, row: dict[str, Any], example: Example) -> bool:
        if self.fmt.kind in ("classification", "multiple_choice"):
            return self.fmt.answer_text(row, options_of(self.fmt, row)) == example.answer
        return True

    def ask(self, examples: list[Example], samples: int, round_: int = 0) -> list[Answer]:
        answers: list[Answer] = []
        if self.matrix is None:
            return answers
        for example in examples:
            query = self.vectorizer.transform([example_text(example.row, self.fmt.inputs)])
            similarity = (self.matrix @ query.T).toarray().ravel()
            ranked = sorted(range(len(self.pool)), key=lambda i: -similarity[i])
            found = 0
            for i in ranked:
                if found == samples:
                    break
                if i in self.used or not self._same_answer(self.pool[i], example):
                    continue
                self.used.add(i)
                answers.append(
                    Answer(example.seed_id, found, as_teacher_text(self.fmt, self.pool[i]), pool_index=i)
                )
                found += 1
            self.usage["requests"] += found
        return answers

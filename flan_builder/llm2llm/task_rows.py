"""A task's raw rows as LLM2LLM sees them: which fields a teacher writes, the answer, the seed sample.

A synthetic example is a raw row of the task (the same fields as the dataset), so it goes
through the task's own templates like any real row. What the teacher must write is read
from the templates in use: the fields they (and the options expression) refer to; the
answer is written as text (a class name, the correct option's text, or the reference) and
stored back the way the dataset stores it (a label index, a reference field).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta

from flan_builder.errors import FlanError
from flan_builder.specs import TaskSpec

_FIELD = re.compile(r"^\s*\[?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\]?\s*$")  # `label`, `[target]`


def _fold(text: str) -> str:
    """An answer as compared: no surrounding quotes, final full stop or case."""
    return text.strip().strip(".\"'").strip().lower()


def _variables(source: str) -> set[str]:
    return set(meta.find_undeclared_variables(jinja2.Environment().parse(source)))


@dataclass(frozen=True)
class TaskFormat:
    """What a teacher writes for one task, and how its answer maps back onto a raw row."""

    spec: TaskSpec
    kind: str  # classification, multiple_choice, qa, math (the teacher prompt's name)
    inputs: tuple[str, ...]  # fields the teacher writes, in the dataset's order
    answer_field: str  # the row field that holds the answer (a label index, or the reference)
    reference_is_list: bool = False  # generation: the reference field holds a list of answers
    templates: tuple[int, ...] = ()  # template indices used for training and grading

    @property
    def labels(self) -> list[str] | None:
        """The class names of a classification task (static options)."""
        return list(self.spec.options) if isinstance(self.spec.options, tuple) else None

    def answer_text(self, row: dict[str, Any], options: list[str] | None = None) -> str:
        """The correct answer of a raw row, as text a teacher reads and writes."""
        value = row[self.answer_field]
        if self.kind in ("classification", "multiple_choice"):
            names = self.labels if self.kind == "classification" else options
            assert names is not None
            return names[int(value)]
        if isinstance(value, list):
            return str(value[0]) if value else ""
        return str(value)

    def make_row(
        self, fields: dict[str, str], answer: str, options: list[str] | None = None
    ) -> dict[str, Any]:
        """A raw row from a teacher's fields and answer text; FlanError when the answer is not valid."""
        row: dict[str, Any] = {name: None for name in self.spec.fields}
        row.update({name: fields[name] for name in self.inputs})
        answer = answer.strip()
        if self.kind in ("classification", "multiple_choice"):
            names = self.labels if self.kind == "classification" else options
            assert names is not None
            folded = [_fold(n) for n in names]
            key = _fold(answer)
            if key not in folded:
                raise FlanError(f"invalid answer: {answer!r} is not one of {names}")
            row[self.answer_field] = folded.index(key)
        else:
            if not answer:
                raise FlanError("no answer")
            row[self.answer_field] = [answer] if self.reference_is_list else answer
        return row


def task_format(spec: TaskSpec, templates: int) -> TaskFormat:
    """The teacher-facing format of a task, for its first ``templates`` non-inverted templates."""
    chosen = tuple(i for i, t in enumerate(spec.templates) if not t.inverted)[:templates]
    if not chosen:
        raise FlanError(f"task {spec.name} has no template that asks the task itself (all are inverted)")
    used: set[str] = set()
    for i in chosen:
        used |= _variables(spec.templates[i].input)
    used -= set(spec.constants)
    if spec.type == "classification" or spec.type == "multiple_choice":
        match = _FIELD.match(spec.answer or "")
        if not match:
            raise FlanError(
                f"task {spec.name}: LLM2LLM needs the answer to be a field holding the label "
                f"index; {spec.path} has answer: {spec.answer!r}"
            )
        answer_field = match.group(1)
        if isinstance(spec.options, str):  # options come from fields: the teacher writes them
            used |= _variables("{{ " + spec.options + " }}")
            kind = "multiple_choice"
        else:
            kind = "classification"
        inputs = tuple(f for f in spec.fields if f in used and f != answer_field)
        return TaskFormat(spec, kind, inputs, answer_field, templates=chosen)
    if spec.type == "generation":
        match = _FIELD.match(spec.references or "")
        if not match:
            raise FlanError(
                f"task {spec.name}: LLM2LLM needs the reference to be a field (or [field]); "
                f"{spec.path} has references: {spec.references!r}"
            )
        answer_field = match.group(1)
        as_list = not (spec.references or "").strip().startswith("[")
        inputs = tuple(f for f in spec.fields if f in used and f != answer_field)
        kind = "math" if spec.extra.get("answer_format") == "####" or "gsm8k" in spec.name else "qa"
        return TaskFormat(spec, kind, inputs, answer_field, reference_is_list=as_list, templates=chosen)
    raise FlanError(
        f"task {spec.name} is a {spec.type} task; LLM2LLM takes classification, multiple "
        "choice and generation tasks"
    )


def seed_count(size: int | float, available: int, where: str) -> int:
    """A count or a fraction of the train split, checked against its size."""
    count = round(size * available) if isinstance(size, float) and size < 1 else int(size)
    if count > available:
        raise FlanError(
            f"{where}: seed_size {size} is larger than the train split ({available} rows); lower seed_size"
        )
    return max(count, 1)


def sample_seed(rows: list[dict[str, Any]], count: int, seed: int, label: str | None) -> list[int]:
    """``count`` row indices drawn with ``seed``; stratified by ``label`` (largest remainder) when given."""
    rng = random.Random(seed)
    if label is None:
        return sorted(rng.sample(range(len(rows)), count))
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row[label], []).append(i)
    quotas = {key: count * len(members) / len(rows) for key, members in groups.items()}
    taken = {key: int(q) for key, q in quotas.items()}
    # hand out what rounding down left, largest remainder first (ties: label order)
    for key in sorted(quotas, key=lambda k: (-(quotas[k] - taken[k]), str(k)))[: count - sum(taken.values())]:
        taken[key] += 1
    chosen: list[int] = []
    for key in sorted(groups, key=str):
        chosen += rng.sample(groups[key], taken[key])
    return sorted(chosen)

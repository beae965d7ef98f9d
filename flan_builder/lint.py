"""``flan templates lint``: every template of every task checked on real rows.

Catches what FLAN's templates-as-string-literals let through: a stray ``n`` left by a
missing backslash, a literal ``\\n``, duplicates, fields that do not exist, targets that
are not among the options, and tasks with too few phrasings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flan_builder.errors import FlanError
from flan_builder.mixing import pool_indices, task_rng
from flan_builder.sources import available_roles, load_split
from flan_builder.specs import TaskSpec, TemplateSpec
from flan_builder.templating import TaskRenderer

MIN_TEMPLATES = 10
MIN_INVERTED = 2
DEFAULT_LINT_ROWS = 64

_JINJA_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
# A lone "n" word, or an "n"/"nn" glued after sentence punctuation before a capital or a
# placeholder: both are what "\n" becomes when its backslash is lost.
_STRAY_N = re.compile(r"(?<![\w'’-])n(?![\w'’-])|(?<=[.?!:;\"')\]])n{1,2}(?=[A-Z{\"])")
_LITERAL_ESCAPE = re.compile(r"\\[ntr]")


@dataclass(frozen=True)
class LintIssue:
    task: str
    template: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.task}/{self.template}" if self.template else self.task
        return f"{where}: {self.message}"


def _static_text(source: str) -> str:
    """Template text outside Jinja tags: where escape artefacts can hide."""
    return _JINJA_BLOCK.sub(" ", source)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def lint_static(
    spec: TaskSpec, min_templates: int = MIN_TEMPLATES, min_inverted: int = MIN_INVERTED
) -> list[LintIssue]:
    """Checks that need no data: counts, duplicates, escape artefacts, syntax."""
    issues: list[LintIssue] = []
    if len(spec.templates) < min_templates:
        issues.append(LintIssue(spec.name, None, f"only {len(spec.templates)} template(s); "
                                f"at least {min_templates} are required (FLAN's rule; --min-templates N "
                                "relaxes it for a task of your own)"))
    inverted = sum(t.inverted for t in spec.templates)
    # A table row is not a sensible thing to ask a model to write: tabular tasks (LIFT) have
    # no inverted templates.
    if inverted < min_inverted and spec.source.tabular is None:
        issues.append(LintIssue(spec.name, None, f"only {inverted} inverted template(s); "
                                f"at least {min_inverted} are required (--min-inverted N relaxes it)"))
    seen_ids: set[str] = set()
    seen_text: dict[str, str] = {}
    for template in spec.templates:
        if template.id in seen_ids:
            issues.append(LintIssue(spec.name, template.id, "duplicate template id"))
        seen_ids.add(template.id)
        key = _normalise(template.input) + "\x00" + _normalise(template.target or "")
        if key in seen_text:
            issues.append(LintIssue(spec.name, template.id,
                                    f"duplicate of template {seen_text[key]}"))
        seen_text.setdefault(key, template.id)
        issues.extend(_escape_issues(spec, template))
    try:
        TaskRenderer(spec)
    except FlanError as exc:
        issues.append(LintIssue(spec.name, None, str(exc)))
    return issues


def _escape_issues(spec: TaskSpec, template: TemplateSpec) -> list[LintIssue]:
    issues = []
    for part, source in (("input", template.input), ("target", template.target or "")):
        text = _static_text(source)
        if _LITERAL_ESCAPE.search(text):
            issues.append(LintIssue(spec.name, template.id,
                                    f"literal escape sequence {_LITERAL_ESCAPE.search(text)[0]!r} "
                                    f"in its {part}; use a real line break"))
        match = _STRAY_N.search(text)
        if match:
            context = text[max(0, match.start() - 12): match.end() + 12].replace("\n", "⏎")
            issues.append(LintIssue(spec.name, template.id,
                                    f"stray 'n' (a lost backslash?) in its {part}: ...{context}..."))
    return issues


def lint_rows(spec: TaskSpec, data_dir: Path | None, rows: int = DEFAULT_LINT_ROWS) -> list[LintIssue]:
    """Render every template on up to ``rows`` real rows of every split the task has."""
    issues: list[LintIssue] = []
    try:
        renderer = TaskRenderer(spec)
    except FlanError:
        return issues  # already reported by lint_static
    for role, present in available_roles(spec, data_dir).items():
        if not present:
            issues.append(LintIssue(spec.name, None, f"{role} split not found in {data_dir}"))
            continue
        try:
            split = load_split(spec, role, data_dir)
        except FlanError as exc:
            issues.append(LintIssue(spec.name, None, str(exc)))
            continue
        indices = pool_indices(len(split), rows, task_rng(0, spec.name, "lint"))
        failed: set[str] = set()
        for index, row in zip(indices, split.take(indices), strict=True):
            for t_index, template in enumerate(spec.templates):
                if template.id in failed:
                    continue
                problem = _check_one(renderer, row, t_index, split.split, index)
                if problem:
                    failed.add(template.id)
                    issues.append(LintIssue(spec.name, template.id, problem))
    return issues


def _check_one(renderer: TaskRenderer, row: dict, t_index: int, split: str, index: int) -> str:
    template = renderer.spec.templates[t_index]
    try:
        example = renderer.render(row, t_index, split=split, row_index=index)
    except FlanError as exc:
        message = str(exc)
        prefix = f"task {renderer.spec.name}, template {template.id}, "
        return message[len(prefix):] if message.startswith(prefix) else message
    if example.options and example.target not in example.options:
        return (f"{split} row {index}: target {example.target!r} is not one of the options "
                f"{example.options}")
    return ""

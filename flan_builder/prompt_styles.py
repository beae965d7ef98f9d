"""FLAN's "role of instructions" ablation (Wei et al. 2021, section 4.3): what the training
rows say instead of an instruction.

- ``instructions``: the task's templates (the default build).
- ``no_template``: only the input fields and the target ("The dog runs." -> "Le chien court.").
- ``dataset_name``: the input fields after the dataset's name ("[wmt_fr_en] The dog runs.").

Only training rows change: the held-out split keeps its natural instructions, since a model
tuned without them would not know which task to do (FLAN evaluated both ablations that way).

The input fields are read off the task's first non-inverted template: its Jinja expressions
and blocks (loops, conditions) are kept in order, its literal text (the instruction) is dropped,
and what is left is joined one per line. So ``{{ premise }}\\n\\nBased on the paragraph above,
can we conclude that "{{ hypothesis }}"?`` gives ``{{ premise }}\\n{{ hypothesis }}``, and a
field that a template formats (a list of triples joined by " | ") keeps that formatting. The
result is an ordinary template, rendered by the same sandboxed renderer (same target, options
and answer as the template it came from) and recorded in the build's manifest.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.specs import TaskSpec, TemplateSpec
from flan_builder.templating import make_environment

PROMPT_STYLES = ("instructions", "no_template", "dataset_name")
DEFAULT_PROMPT_STYLE = "instructions"

# Statements that open a block closed by an end tag; `set` only in its block form (no '=').
_BLOCKS = {"for", "if", "macro", "call", "filter", "with", "autoescape", "set"}
# Statements that print nothing: kept in place, without a line of their own.
_SILENT = {"set", "macro", "import", "from", "do"}
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.\-/ \[\]:']+")  # no Jinja delimiter can start


def _units(source: str) -> list[tuple[str, bool]]:
    """The template's top-level expressions and blocks as (source, prints) pairs, in order."""
    tokens = list(make_environment().lex(source))
    units: list[tuple[str, bool]] = []
    i = 0
    while i < len(tokens):
        kind = tokens[i][1]
        if kind == "variable_begin":
            j = next(k for k in range(i, len(tokens)) if tokens[k][1] == "variable_end")
            units.append((_strip_outer_control(tokens[i:j + 1]), True))
            i = j + 1
        elif kind == "block_begin":
            j = _block_end(tokens, i)
            name = _statement(tokens, i)[0]
            units.append((_strip_outer_control(tokens[i:j + 1]), name not in _SILENT))
            i = j + 1
        elif kind == "raw_begin":  # {% raw %}...{% endraw %} is literal text, like data
            i = next(k for k in range(i, len(tokens)) if tokens[k][1] == "raw_end") + 1
        else:  # data (the instruction's words), comments
            i += 1
    return units


def _statement(tokens: list[tuple[int, str, str]], start: int) -> tuple[str, int]:
    """The statement's keyword and the index of its block_end token."""
    end = next(k for k in range(start, len(tokens)) if tokens[k][1] == "block_end")
    words = [value for _, kind, value in tokens[start:end] if kind == "name"]
    return (words[0] if words else ""), end


def _opens_block(tokens: list[tuple[int, str, str]], start: int) -> bool:
    name, end = _statement(tokens, start)
    if name == "set":  # {% set x = 1 %} is one statement; {% set x %}...{% endset %} a block
        return not any(kind == "operator" and value == "=" for _, kind, value in tokens[start:end])
    return name in _BLOCKS


def _block_end(tokens: list[tuple[int, str, str]], start: int) -> int:
    """Index of the block_end token that closes the statement (and its block) opened at ``start``."""
    depth = 0
    i = start
    while True:
        name, end = _statement(tokens, i)
        if name.startswith("end") and name[3:] in _BLOCKS:
            depth -= 1
        elif _opens_block(tokens, i):
            depth += 1
        if depth == 0:
            return end
        i = next(k for k in range(end + 1, len(tokens)) if tokens[k][1] == "block_begin")


def _strip_outer_control(tokens: list[tuple[int, str, str]]) -> str:
    """A unit's source without '-' whitespace control on its outer edges: the text it would
    strip (the instruction) is gone, and it must not eat the line break between fields."""
    values = [value for _, _, value in tokens]
    values[0] = values[0].rstrip("-+")
    values[-1] = values[-1].strip().lstrip("-+")  # the lexer keeps what '-}}' swallowed in the token
    return "".join(values)


def first_instruction_template(spec: TaskSpec) -> TemplateSpec:
    """The template the raw inputs are read from: the task's first one that is not inverted."""
    for template in spec.templates:
        if not template.inverted:
            return template
    raise FlanError(f"{spec.path} (task {spec.name}): every template is inverted, so there is no "
                    "input/target pair to strip to its fields; add a template that does the task "
                    "itself, or build it with --prompt-style instructions")


def raw_input_source(spec: TaskSpec) -> str:
    """Jinja for the task's input fields alone, one per line (see the module docstring)."""
    template = first_instruction_template(spec)
    parts: list[str] = []
    printed = False
    for source, prints in _units(template.input):
        if prints and printed:
            parts.append("\n")
        parts.append(source)
        printed = printed or prints
    if not printed:
        raise FlanError(f"{spec.path}:{template.line} (task {spec.name}, template {template.id}): the "
                        "template prints no field, so no-template / dataset-name rows would be empty; "
                        "put the fields in the template as {{ field }}")
    return "".join(parts)


def _literal(text: str) -> str:
    """``text`` as Jinja source that prints it as written."""
    if _PLAIN_TEXT.fullmatch(text):
        return text
    return "{% raw %}" + text.replace("{% endraw %}", "") + "{% endraw %}"


def styled_template(spec: TaskSpec, style: str) -> TemplateSpec:
    """The one template a training row of ``spec`` is rendered with under ``style``."""
    base = first_instruction_template(spec)
    raw = raw_input_source(spec)
    if style == "no_template":
        source = raw
    elif style == "dataset_name":
        source = f"{_literal('[' + spec.name + ']')} {raw}"
    else:
        raise FlanError(f"--prompt-style must be one of {', '.join(PROMPT_STYLES)} (got {style!r})")
    # Same target, options, answer and references as the template the fields come from.
    return dataclasses.replace(base, id=style, input=source, part_lines={}, fewshot={})


def styled_spec(spec: TaskSpec, style: str) -> TaskSpec:
    """``spec`` with its templates replaced by the style's one template (``instructions``: as is)."""
    if style == DEFAULT_PROMPT_STYLE:
        return spec
    return dataclasses.replace(spec, templates=(styled_template(spec, style),))


def check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise FlanError(f"--prompt-style must be one of {', '.join(PROMPT_STYLES)} (got {style!r})")


def describe(specs: list[TaskSpec], originals: dict[str, TaskSpec], style: str) -> dict[str, Any]:
    """The manifest's record of the style: for each training task, the template its fields came
    from and the Jinja its rows were rendered with."""
    if style == DEFAULT_PROMPT_STYLE:
        return {"style": style}
    return {
        "style": style,
        "applies_to": "train",  # the held-out split keeps its natural instructions (FLAN 4.3)
        "tasks": {
            spec.name: {"from_template": first_instruction_template(originals[spec.name]).id,
                        "input": spec.templates[0].input}
            for spec in specs
        },
    }

"""The template engine: sandboxed, strict Jinja, compiled once, applied to rows.

A template from a stranger cannot run code (``SandboxedEnvironment``) and a missing
field is an error, not an empty string (``StrictUndefined``). Templates and the
spec's expressions are compiled once per task and reused for every row, which is
what makes rendering fast (promptsource compiles on every ``apply``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from flan_builder.errors import FlanError
from flan_builder.specs import TaskSpec, TemplateSpec

DEFAULT_SEPARATOR = "\n\n"
# Joins input and target into one compiled template so a row costs one render, not two.
_JOINT = "\x1e\x1f"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def options_suffix(options: list[str]) -> str:
    """FLAN's OPTIONS block, appended after the instruction (one switch for every template)."""
    return "\n\nOPTIONS:\n- " + "\n- ".join(options)


def make_environment() -> SandboxedEnvironment:
    """The one Jinja environment every template and expression is compiled in."""
    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


@dataclass(frozen=True)
class RenderedExample:
    """One (row, template) pair turned into text, with what evaluation needs."""

    template_id: str
    inverted: bool
    input: str  # the instruction without the OPTIONS suffix
    prompt: str  # what the model sees: input, plus OPTIONS when switched on
    target: str
    completion: str  # separator + target (the prompt ends in non-whitespace)
    options: list[str]
    answer_index: int
    references: list[str]


class TemplateRenderError(FlanError):
    """A template failed on a row; the message names task, template, split and row."""


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    match = re.search(r"'([^']+)' is undefined|has no attribute '([^']+)'", str(exc))
    if match:
        return match.group(1) or match.group(2)
    return str(exc)


def _render_error(
    exc: jinja2.TemplateError, where: str, row: Mapping[str, Any], fix: str
) -> TemplateRenderError:
    """A Jinja failure on a row, as a message naming what failed and what to fix."""
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateRenderError(
            f"{where}: missing field '{_undefined_name(exc)}' (the row has: "
            f"{', '.join(sorted(row))}); fix {fix} or the data"
        )
    return TemplateRenderError(f"{where}: {exc}")


class _Expression:
    """A compiled spec expression (options / answer / references) with a fast path for names."""

    def __init__(self, env: SandboxedEnvironment, source: str) -> None:
        self.source = source.strip()
        if _IDENTIFIER.fullmatch(self.source):
            name = self.source
            self._call: Callable[[Mapping[str, Any]], Any] = lambda ctx: ctx[name]
            self._name: str | None = name
        else:
            env.compile_expression(self.source)  # validates: one expression, nothing after it
            # Evaluated like compile_expression does, but on the shared context (no copy).
            template = env.from_string("{% set result = (" + self.source + ") %}")

            def evaluate(ctx: Mapping[str, Any]) -> Any:
                context = template.new_context(ctx, shared=True)
                for _ in template.root_render_func(context):
                    pass
                return context.vars["result"]

            self._call = evaluate
            self._name = None

    def __call__(self, ctx: Mapping[str, Any]) -> Any:
        try:
            value = self._call(ctx)
        except KeyError:
            raise jinja2.UndefinedError(f"'{self._name}' is undefined") from None
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        return value


class _CompiledTemplate:
    def __init__(self, env: SandboxedEnvironment, spec: TaskSpec, template: TemplateSpec) -> None:
        self.spec = template
        where = f"{spec.path}:{template.line} (task {spec.name}, template {template.id}"
        target = template.target
        if target is None:
            if template.inverted:
                raise FlanError(f"{where}): an inverted template needs a 'target'")
            target = "{{ correct_choice }}" if spec.has_options else "{{ references[0] }}"
        self._target_source = target
        try:
            self.joint = env.from_string(template.input + _JOINT + target)
        except jinja2.TemplateSyntaxError:
            # Compile the parts alone to say which one is broken and on which of its lines.
            for part, source in (("input", template.input), ("target", target)):
                try:
                    env.from_string(source)
                except jinja2.TemplateSyntaxError as exc:
                    start = template.part_lines.get(part)
                    file_line = start + exc.lineno - 1 if start else template.line
                    raise FlanError(f"{spec.path}:{file_line} (task {spec.name}, template "
                                    f"{template.id}, line {exc.lineno} of its {part}): "
                                    f"template syntax error: {exc.message}") from None
            raise FlanError(f"{where}): template syntax error across input and target "
                            "(a block opened in one and closed in the other?)") from None
        try:
            self.options = (
                _Expression(env, template.options) if isinstance(template.options, str) else None
            )
            self.answer = _Expression(env, template.answer) if template.answer else None
            self.references = (
                _Expression(env, template.references) if template.references else None
            )
        except jinja2.TemplateSyntaxError as exc:
            raise FlanError(f"{where}): syntax error in its options/answer/references "
                            f"expression: {exc.message}") from None
        self.static_options = (
            list(template.options) if isinstance(template.options, tuple) else None
        )
        self._env = env

    def render_pair(self, ctx: dict[str, Any]) -> tuple[str, str]:
        """Input and target in one pass over a shared context (which already holds the globals).

        ``Template.render`` copies the context and merges the globals on every call, which
        costs more than rendering these short templates does.
        """
        joint = self.joint
        parts = "".join(joint.root_render_func(joint.new_context(ctx, shared=True))).split(_JOINT)
        if len(parts) != 2:  # the row's own text holds the joint marker: render separately
            return (self._env.from_string(self.spec.input).render(ctx),
                    self._env.from_string(self._target_source).render(ctx))
        return parts[0], parts[1]

    @property
    def needs_own_context(self) -> bool:
        """True when the template overrides the task's options, answer or references."""
        return (self.options is not None or self.static_options is not None
                or self.answer is not None or self.references is not None)


class TaskRenderer:
    """Renders one task's rows with its templates; everything is compiled on construction."""

    def __init__(
        self,
        spec: TaskSpec,
        env: SandboxedEnvironment | None = None,
        *,
        with_options: bool = True,
        separator: str = DEFAULT_SEPARATOR,
    ) -> None:
        self.spec = spec
        self.env = env or make_environment()
        self.with_options = with_options
        self.separator = separator
        where = f"{spec.path} (task {spec.name})"
        try:
            self.options = _Expression(self.env, spec.options) if isinstance(spec.options, str) else None
            self.static_options = list(spec.options) if isinstance(spec.options, tuple) else None
            self.answer = _Expression(self.env, spec.answer) if spec.answer else None
            self.references = _Expression(self.env, spec.references) if spec.references else None
        except jinja2.TemplateSyntaxError as exc:
            raise FlanError(f"{where}: syntax error in an options/answer/references expression: "
                            f"{exc.message}") from None
        self.templates = [_CompiledTemplate(self.env, spec, t) for t in spec.templates]
        # range, dict, ... (render_pair bypasses the env's globals) and the spec's constants
        self.globals = {**self.env.globals, **spec.constants}
        self.template_ids = [t.id for t in spec.templates]

    # -- context ---------------------------------------------------------------------------

    def _choices(
        self, ctx: dict[str, Any], compiled: _CompiledTemplate | None, where: str
    ) -> tuple[list[str], int]:
        options_expr = compiled.options if compiled and compiled.options else self.options
        static = compiled.static_options if compiled and compiled.static_options else None
        if static is None and options_expr is None:
            static = self.static_options
        if static is not None:
            options = static
        else:
            assert options_expr is not None
            value = options_expr(ctx)
            if not isinstance(value, (list, tuple)) or not value:
                raise TemplateRenderError(
                    f"{where}: options expression {options_expr.source!r} gave {value!r}, "
                    "not a non-empty list; fix 'options' in the spec"
                )
            options = [str(v).strip() for v in value]  # data has stray spaces (piqa)
        answer_expr = compiled.answer if compiled and compiled.answer else self.answer
        assert answer_expr is not None
        raw = answer_expr(ctx)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TemplateRenderError(
                f"{where}: answer expression {answer_expr.source!r} gave {raw!r}, not an option "
                "index; fix 'answer' in the spec or the row"
            )
        if not 0 <= raw < len(options):
            raise TemplateRenderError(
                f"{where}: label out of range: answer index {raw} but only {len(options)} options "
                f"{options}; fix the row's label or the spec's options"
            )
        return options, raw

    def _references(
        self, ctx: dict[str, Any], compiled: _CompiledTemplate | None, where: str
    ) -> list[str]:
        expr = (compiled.references if compiled else None) or self.references
        if expr is None:
            return [ctx["correct_choice"]] if "correct_choice" in ctx else []
        value = expr(ctx)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TemplateRenderError(f"{where}: references expression {expr.source!r} gave "
                                      f"{type(value).__name__}, not a list of strings")
        refs = [str(v) for v in value if str(v).strip()]
        if not refs and self.spec.type == "generation":
            raise TemplateRenderError(f"{where}: the row has no reference answer "
                                      f"({expr.source!r} is empty); drop the row or fix the spec")
        return refs

    # -- rendering -------------------------------------------------------------------------

    def render(
        self, row: Mapping[str, Any], template_index: int, *, split: str = "?", row_index: int = -1,
        base_context: dict[str, Any] | None = None,
    ) -> RenderedExample:
        """Render ``row`` with one template; ``base_context`` lets callers reuse a row's context."""
        compiled = self.templates[template_index]
        template = compiled.spec
        where = f"task {self.spec.name}, template {template.id}, {split} row {row_index}"
        try:
            if base_context is None or compiled.needs_own_context:
                ctx = self.context(row, compiled, where)
            else:
                ctx = base_context
            text, target = compiled.render_pair(ctx)
            text, target = text.strip(), target.strip()
            if self.spec.has_options and not template.inverted:
                options = ctx["answer_choices"]
                answer_index = ctx["correct_index"]
                references = self._references(ctx, compiled, where)
            else:
                options, answer_index = [], -1
                references = [target] if template.inverted else ctx["references"]
        except jinja2.TemplateError as exc:
            raise _render_error(exc, where, row, f"the template in {self.spec.path}") from None
        if not text:
            raise TemplateRenderError(f"{where}: the rendered input is empty")
        if not target:
            raise TemplateRenderError(f"{where}: the rendered target is empty")
        prompt = text + options_suffix(options) if (options and self.with_options) else text
        return RenderedExample(
            template_id=template.id,
            inverted=template.inverted,
            input=text,
            prompt=prompt,
            target=target,
            completion=self.separator + target,
            options=options,
            answer_index=answer_index,
            references=references,
        )

    def context(
        self, row: Mapping[str, Any], compiled: _CompiledTemplate | None = None, where: str = ""
    ) -> dict[str, Any]:
        """The names a template sees: the row's fields, ``row`` itself, and the answer choices."""
        ctx: dict[str, Any] = {**self.globals, **row}
        ctx["row"] = row
        where = where or f"task {self.spec.name}"
        try:
            if self.spec.has_options:
                options, index = self._choices(ctx, compiled, where)
                ctx["answer_choices"] = options
                ctx["correct_index"] = index
                ctx["correct_choice"] = options[index]
            elif self.references is not None:
                ctx["references"] = self._references(ctx, compiled, where)
        except jinja2.TemplateError as exc:
            raise _render_error(exc, where, row, f"the spec in {self.spec.path}") from None
        return ctx

    def render_all(
        self, row: Mapping[str, Any], template_indices: list[int], *, split: str = "?",
        row_index: int = -1,
    ) -> list[RenderedExample]:
        """Render one row with several templates, building the shared context once."""
        base = self.context(row, None, f"task {self.spec.name}, {split} row {row_index}")
        return [
            self.render(row, i, split=split, row_index=row_index, base_context=base)
            for i in template_indices
        ]

"""Templates from strangers are bounded: they cannot mutate what they are given, include
files, or make a render use unbounded memory or time; each attack is a one-line error."""

from __future__ import annotations

import time

import pytest

from flan_builder import templating
from flan_builder.errors import FlanError
from flan_builder.lint import lint_rows, lint_static
from flan_builder.specs import load_spec
from flan_builder.templating import TaskRenderer
from tests.helpers import write_choice_spec, write_rows

ROW = {"text": "hello", "choices": ["a", "b"], "label": 0}


def hostile_spec(tmp_path, template: str):
    return load_spec(write_choice_spec(tmp_path / "t", "hostile", "attack", template))


def render_attack(tmp_path, template: str, row=None):
    renderer = TaskRenderer(hostile_spec(tmp_path, template))
    return renderer.render(dict(row or ROW), 1, split="train", row_index=0)


def assert_one_line(exc: FlanError, *parts: str) -> None:
    message = str(exc)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


MUTATIONS = [
    "{% set _ = row.update({'text': 'changed'}) %}{{ text }}",
    "{{ answer_choices.append('z') }}{{ text }}",
    "{{ choices.append('z') }}{{ text }}",
    "{{ row.pop('label') }}{{ text }}",
]


@pytest.mark.parametrize("template", MUTATIONS)
def test_templates_cannot_mutate_rows_or_options(tmp_path, template):
    row = {"text": "hello", "choices": ["a", "b"], "label": 0}
    spec = hostile_spec(tmp_path, template)
    renderer = TaskRenderer(spec)
    with pytest.raises(FlanError) as info:
        renderer.render(row, 1, split="train", row_index=0)
    assert_one_line(info.value, "task hostile", "template attack", "train row 0")
    assert row == {"text": "hello", "choices": ["a", "b"], "label": 0}


MEMORY_AND_TIME = [
    "{{ 'x' * 10**10 }}",
    "{{ 10**10 * 'x' }}",
    "{{ ['x'] * 10**10 }}",
    "{{ 2 ** (10 ** 10) }}",
    "{% for i in range(10**5) %}{% for j in range(10**5) %}x{% endfor %}{% endfor %}",
    "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}done",
    "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s }}",
    "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
    "{{ ns.s }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{{ range(10**10) | list }}",
    "{{ 'x' | center(10**10) }}",
    "{{ 'x' | indent(10**10) }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ '{:>{}}'.format('x', 10**10) }}",
    "{{ '%10000000000s' % 'x' }}",
    "{{ '%*s' | format(10**10, 'x') }}",
    "{{ 1 / 0 }}",
]


@pytest.mark.parametrize("template", MEMORY_AND_TIME)
def test_huge_or_endless_renders_are_one_line_template_errors(tmp_path, monkeypatch, template):
    monkeypatch.setattr(templating, "RENDER_TIME_LIMIT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(FlanError) as info:
        render_attack(tmp_path, template)
    assert time.monotonic() - started < 10
    assert_one_line(info.value, "task hostile", "template attack", "train row 0")


def test_rendered_output_is_capped(tmp_path):
    with pytest.raises(FlanError, match="limit of 100,000"):
        render_attack(tmp_path, "{% for i in range(3) %}{{ text }}{% endfor %}",
                      {**ROW, "text": "y" * 40_000})
    # Within the cap, loops and repetition work as before.
    example = render_attack(tmp_path, "{% for i in range(3) %}{{ text * 2 }}{% endfor %}")
    assert example.input == "hello" * 6


@pytest.mark.parametrize("template", [
    "{% include 'other.txt' %}",
    "{% import 'macros.txt' as m %}{{ text }}",
    "{% from 'macros.txt' import m %}{{ text }}",
    "{% extends 'base.txt' %}",
])
def test_includes_imports_and_extends_are_refused_naming_spec_and_template(tmp_path, template):
    with pytest.raises(FlanError) as info:
        TaskRenderer(hostile_spec(tmp_path, template))
    assert_one_line(info.value, "hostile.yaml", "task hostile", "template attack", "not allowed")


def test_lint_reports_hostile_templates(tmp_path, monkeypatch):
    monkeypatch.setattr(templating, "RENDER_TIME_LIMIT_S", 0.5)
    spec = hostile_spec(tmp_path, "{% include 'x' %}")
    assert any("not allowed" in str(issue) for issue in lint_static(spec, 1, 0))
    spec = hostile_spec(tmp_path, "{{ 'x' * 10**10 }}")
    write_rows(tmp_path / "d", "hostile", "train", [ROW])
    issues = lint_rows(spec, tmp_path / "d")
    assert [issue.template for issue in issues] == ["attack"]
    assert "limit of 100,000" in issues[0].message

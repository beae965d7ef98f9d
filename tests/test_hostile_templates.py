"""Templates from strangers are bounded: they cannot mutate what they are given, include
files, or make a render use unbounded memory or time; each attack is a one-line error."""

from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


# Each of these is one operation that, unbounded, builds about 10**7 characters (100 times the cap,
# ~10**10 at full size) from a few values of 10**4: a refusal must come before the text is built.
BUILD = "{% set s = 'x' * 10000 %}{% set t = 'y' * 10000 %}{% set l = [s] * 1000 %}"
ONE_OPERATION = [
    "{{ s.replace('x', t) }}",
    "{{ s.replace('', t) }}",
    "{{ s | replace('x', t) }}",
    "{{ 'abc' | replace('b', l) }}",  # the replacement is a list whose text is 10**7
    "{{ s.encode().replace('x'.encode(), t.encode()) }}",
    "{{ ''.join(l) }}",
    "{{ l | join }}",
    "{{ l | join(', ') }}",
    "{{ range(1000) | map('string') | join(t) }}",  # the separator, repeated (a generator joined)
    "{{ [l] | join }}",  # an item's own text
    "{{ l }}",
    "{{ [l, 1] }}",
    "{% set ns = namespace(l=l) %}{{ ns }}",
    "{{ l ~ '' }}",
    "{{ l | string }}",
    "{{ l | upper }}",
    "{{ {'k': l} | xmlattr }}",
    "{{ ('{0}' * 1000).format(s) }}",
    "{{ ('{0:9999}' * 1000).format('') }}",
    "{{ '{:{}}'.format('', '10000000') }}",  # a width from a string argument
    "{{ '{!r}'.format(l) }}",
    "{{ ('%(a)s' * 1000) % {'a': s} }}",
    "{{ ('%(a(b))s' * 1000) % {'a(b)': s} }}",  # a key with parentheses of its own
    "{{ '%(a)10000000s' % {'a': ''} }}",  # a width after a key
    "{{ ('%s' * 1000) % ((s,) * 1000) }}",
    "{{ ('%(a)s' * 1000) | format(a=s) }}",
    "{{ ('\\t' * 10000).expandtabs(1000) }}",
    "{{ ('x' * 1000).translate({120: s}) }}",
    "{{ ('\\n' * 10000) | indent(1000, blank=true) }}",
    "{{ ('\\na' * 10000) | indent(t) }}",
    "{{ ('a ' * 5000) | wordwrap(1, wrapstring=t) }}",
    "{{ ('www.a.com ' * 1000) | urlize(target=s) }}",
    "{{ l | tojson }}",
    "{{ [[[0] * 1000]] | tojson(indent=10000) }}",  # 1000 lines, each indented 30,000
    "{{ l | pprint }}",
    "{{ {t: [0] * 1000} | pprint }}",  # its repr fits; each of 1000 lines is indented past the key
    "{{ ([l] * 200) | sum(start=[]) }}",
    "{{ ([[0]] * 10000) | sum(start=[]) }}",  # 10**4 items, but 5 * 10**7 copied one list at a time
    "{% set b %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endset %}{{ b | length }}",
    "{% macro m() %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endmacro %}{{ m() | length }}",
    "{% filter length %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endfilter %}",
    "{{ lipsum(1000, min=1000, max=1001) }}",
    "{{ 'x'.encode() * 10000000 }}",
    # a text filter in a loop grows its result a step at a time: each step may not pass the cap
    "{% set ns = namespace(s='\"') %}{% for i in range(24) %}{% set ns.s = ns.s | tojson %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(x=2 ** 150000) %}{% for i in range(8) %}{% set ns.x = ns.x * ns.x %}"
    "{% endfor %}{{ 1 }}",
]


@pytest.mark.parametrize("template", ONE_OPERATION)
def test_one_operation_is_refused_before_it_builds_its_result(tmp_path, template):
    renderer = TaskRenderer(hostile_spec(tmp_path, BUILD + template))
    tracemalloc.start()
    try:
        with pytest.raises(FlanError) as info:
            renderer.render(dict(ROW), 1, split="train", row_index=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(info.value, "task hostile", "template attack", "train row 0")
    assert re.search(r"limit of [\d,]+|too large a number|asks for a huge", str(info.value)), str(info.value)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB: the result was built before the refusal"


# The same operations within the cap print what Jinja's own sandbox prints.
WITHIN_THE_CAP = [
    "{{ text.replace('l', 'LL') }} {{ text | replace('l', '') }} {{ text | replace('l', 'L', 1) }}",
    "{{ choices | join(', ') }} {{ ', '.join(choices) }} {{ [1, 2.5, none, [3, 'q']] | join('|') }}"
    " {{ [{'n': 'a'}, {'n': 'b'}] | join('+', attribute='n') }}",
    "{{ choices }} {{ [text, {'a': (1, 2)}, none] }} {{ choices ~ '!' }} {{ choices | string | upper }}"
    " {% set ns = namespace(k=choices) %}{{ ns }} {{ {'a': 1}.items() }}",
    "{{ '{0}-{1!r}-{x:>8}'.format(text, choices, x=3) }} {{ '{a}'.format_map({'a': text}) }}"
    " {{ '%s and %5.2f' % (text, 2) }} {{ '%(k)s!' | format(k=text) }} {{ '100%%' % () }}",
    "{{ 'a\\tb'.expandtabs(4) }} {{ text.translate({104: 'H', 111: none}) }}",
    "{{ 'one\\ntwo\\n\\nthree' | indent(2, first=true) }} {{ ((text ~ ' ') * 20) | wordwrap(11, "
    "wrapstring='<br>') }} {{ text | center(11) }}",
    "{{ {'b': [1, text], 'a': '<&>'} | tojson }} {{ [[1, 2], [3]] | tojson(indent=2) }}"
    " {{ {'k': choices, 'long': [text * 20] * 4} | pprint }}",
    "{{ [[1], [2, 3]] | sum(start=[]) }} {{ [1, 2, 3] | sum }} {{ 'see www.example.com' | "
    "urlize(target='_blank') }}",
    "{% set b %}{% for c in choices %}{{ c }};{% endfor %}{% endset %}{% macro m(x) %}<{{ x }}>"
    "{% endmacro %}{{ b }}{{ m(text) }}{% filter upper %}{{ text }}{% endfilter %}",
    "{% autoescape true %}{{ '<b>' | safe }}{{ '<i>' }}{{ choices }}{% endautoescape %}",
    "{{ lipsum(1, html=false, min=3, max=4) | wordcount > 0 }} {{ 'x'.encode() * 3 }} {{ 3 * 4 }}"
    " {{ text | upper | escape }} {{ {'k': text} | xmlattr }}",
]


@pytest.mark.parametrize("template", WITHIN_THE_CAP)
def test_bounded_operations_within_the_cap_print_what_jinja_prints(tmp_path, template):
    renderer = TaskRenderer(hostile_spec(tmp_path, template))
    ctx = renderer.context(ROW, renderer.templates[1])
    reference = ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(template)
    assert renderer.render(dict(ROW), 1).input == reference.render(ctx).strip()


def test_a_printed_str_does_not_pay_for_the_size_checks(tmp_path, monkeypatch):
    """A str is printed as it is; only other values (a list, a number) go through finalize."""
    renderer = TaskRenderer(hostile_spec(tmp_path, "{{ text }} {{ text }}!"))
    calls = []
    finalize = renderer.env.finalize
    monkeypatch.setattr(renderer.env, "finalize", lambda value: calls.append(value) or finalize(value))
    assert renderer.render(dict(ROW), 1).input == "hello hello!"
    assert calls == []
    renderer = TaskRenderer(hostile_spec(tmp_path, "{{ choices }} {{ label }}"))
    finalize = renderer.env.finalize
    monkeypatch.setattr(renderer.env, "finalize", lambda value: calls.append(value) or finalize(value))
    assert renderer.render(dict(ROW), 1).input == "['a', 'b'] 0"
    assert calls == [["a", "b"], 0]

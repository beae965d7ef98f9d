"""The plain renderer: templates of text, names, subscripts, dict fields, flat loops and `join` /
`replace` run as generated Python instead of Jinja's code, with exactly Jinja's output and errors."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from flan_builder import templating
from flan_builder.errors import FlanError
from flan_builder.sources import load_split
from flan_builder.specs import load_registry, load_spec
from flan_builder.templating import TaskRenderer, TemplateRenderError, _plain_renderer, make_environment
from tests.helpers import SHARED_DATA, requires_shared_data, write_choice_spec

ROW = {"text": "hello", "choices": ["a", "b"], "label": 0,
       "features": [{"name": "petal length", "value": "1.4"}, {"name": "petal width", "value": 0.2}]}


def _outcome(renderer: TaskRenderer, row: dict, template: int, split: str = "train", index: int = 0):
    try:
        return renderer.render(row, template, split=split, row_index=index).__dict__
    except TemplateRenderError as exc:
        return ("error", str(exc))


def _pair(spec, with_options: bool = True) -> tuple[TaskRenderer, TaskRenderer]:
    """The same task twice: with the plain renderer, and with Jinja's code only."""
    plain, jinja = (TaskRenderer(spec, with_options=with_options) for _ in range(2))
    for compiled in jinja.templates:
        compiled._plain = None
    return plain, jinja


def _spec(tmp_path, template: str):
    return load_spec(write_choice_spec(tmp_path / "t", "plain", "probe", template))


@requires_shared_data
def test_every_shipped_template_renders_the_same_rows_as_jinja():
    registry = load_registry()
    compiled = total = 0
    for spec in registry.tasks.values():
        for with_options in (True, False):
            plain, jinja = _pair(spec, with_options)
            if with_options:
                compiled += sum(t._plain is not None for t in plain.templates)
                total += len(plain.templates)
            for split_name in spec.source.splits:
                split = load_split(spec, split_name, SHARED_DATA)
                rows = split.take(range(min(len(split), 12)))
                for index, row in enumerate(rows):
                    for template in range(len(plain.templates)):
                        assert _outcome(plain, row, template, split_name, index) == \
                            _outcome(jinja, row, template, split_name, index), (spec.name, template, index)
    assert total == 536 and compiled >= 490  # most shipped templates skip Jinja's code


@pytest.mark.parametrize("template", [
    "{{ text }} / {{ choices[label] }} / {{ choices[1] }}",
    "{% for f in features %}{{ f.name }} is {{ f.value }}{{ ', ' if not loop.last else '.' }}{% endfor %}"
    " {{ text }}",
    "{% for f in features %}{% if not loop.first %}; {% endif %}{{ f['name'] }}={{ f.value }}{% endfor %}",
    "{{ choices | join(' | ') | replace('a', 'A') }} {{ choices | join }}",
    "{{ text.split('l')[-1].strip() }} {{ text.rstrip('o') }} {{ [text, choices[0]] }}",
    "quotes \"\"\" and ''' and \\ and {{ '{{' }} stay text: {{ text }}\n",
])
def test_plain_templates_compile_and_render_as_jinja_on_odd_rows(tmp_path, template):
    plain, jinja = _pair(_spec(tmp_path, template))
    assert plain.templates[1]._plain is not None
    rows = [ROW, {**ROW, "text": None}, {**ROW, "text": 3.5}, {**ROW, "label": 7},
            {**ROW, "choices": ["a", 2]}, {k: v for k, v in ROW.items() if k != "text"},
            {**ROW, "features": [{"name": "x"}]},
            {**ROW, "features": ["not a dict"]}, {**ROW, "features": "abc"}, {**ROW, "choices": "ab"},
            {**ROW, "text": "a\x1e\x1fb"}, {**ROW, "text": "y" * 60_000}]
    for row in rows:
        assert _outcome(plain, dict(row), 1) == _outcome(jinja, dict(row), 1), row


@pytest.mark.parametrize("template", [
    "{% if text %}{{ text }}{% endif %}",  # an if outside a loop
    "{{ text | upper }}",  # another filter
    "{{ text.upper() }}",  # a call
    "{% for f in features %}{% for g in features %}{{ g.name }}{% endfor %}{% endfor %}",  # nested
    "{% for f in features %}{{ f.items }}{% endfor %}",  # a dict's own attribute, not a key
    "{% for f in features %}{{ loop.index }}{% endfor %}",
    "{% set x = text %}{{ x }}",
])
def test_what_the_plain_renderer_does_not_take_is_left_to_jinja(template):
    assert _plain_renderer(make_environment(), template) is None


def test_spec_expressions_take_the_plain_path_and_fall_back_to_jinja():
    from flan_builder.templating import _NOT_PLAIN, _Expression, _plain_expression

    env = make_environment()
    plain = _plain_expression(env, "[answer.split('####')[-1].strip()]")
    assert plain({"answer": "3 + 4 = 7\n#### 7 "}) == ["7"]
    assert plain({"answer": 7}) is _NOT_PLAIN and plain({}) is _NOT_PLAIN
    expression = _Expression(env, "[answer.split('####')[-1].strip()]")
    assert expression({"answer": "a #### b"}) == ["b"]
    with pytest.raises(Exception, match="has no attribute 'split'"):  # Jinja's own error, not ours
        expression({"answer": 7})
    assert _plain_expression(env, "choices.index(answer)") is None  # a call it does not take


def test_the_cap_holds_before_a_plain_loop_builds_past_it(tmp_path):
    """A loop repeating a long field is refused as Jinja refuses it, without building the whole."""
    renderer = TaskRenderer(_spec(tmp_path, "{% for f in features %}{{ text }}{% endfor %}"))
    assert renderer.templates[1]._plain is not None
    row = {**ROW, "text": "y" * 50_000, "features": [{"name": "x"}] * 5_000}
    tracemalloc.start()
    with pytest.raises(FlanError, match="limit of 100,000"):
        renderer.render(row, 1, split="train", row_index=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # not the 250,000,000 characters the loop would make


def test_a_loop_past_the_plain_limit_runs_under_jinjas_time_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(templating, "RENDER_TIME_LIMIT_S", 0.1)
    renderer = TaskRenderer(_spec(tmp_path, "{% for f in features %}{% endfor %}{{ text }}"))
    row = {**ROW, "features": [{}] * 3_000_000}
    started = time.monotonic()
    with pytest.raises(FlanError, match="ran longer than the 0.1 s"):
        renderer.render(row, 1, split="train", row_index=0)
    assert time.monotonic() - started < 10


def test_a_batch_pauses_the_collector_and_restores_it_even_on_a_bad_row(tmp_path):
    import gc

    renderer = TaskRenderer(_spec(tmp_path, "{{ text }}"))
    first = renderer.render(ROW, 0).input
    seen = []
    original = renderer._render_on

    def spy(*args):
        seen.append(gc.isenabled())
        return original(*args)

    renderer._render_on = spy
    assert gc.isenabled()
    examples = renderer.render_rows([ROW, ROW], [(1,), (0, 1)])
    assert [e.input for e in examples] == ["hello", first, "hello"] and seen == [False] * 3 and gc.isenabled()
    with pytest.raises(FlanError, match="row 1"):
        renderer.render_rows([ROW, {**ROW, "text": None}], [(1,), (1,)])
    assert gc.isenabled()
    gc.disable()
    try:
        renderer.render_rows([ROW], [(1,)])
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()

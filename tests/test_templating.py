"""The template engine: sandboxed, strict, compiled once, one OPTIONS switch."""

from __future__ import annotations

import pytest

from flan_builder.errors import FlanError
from flan_builder.specs import load_spec
from flan_builder.templating import TaskRenderer, options_suffix
from tests.helpers import FIXTURE_TEMPLATES, write_spec

ROW = {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "label": 0}


def nli_spec():
    return load_spec(FIXTURE_TEMPLATES / "nli" / "toy_nli.yaml")


def test_options_suffix_is_flan_format():
    assert options_suffix(["yes", "no"]) == "\n\nOPTIONS:\n- yes\n- no"


def test_same_template_renders_with_and_without_options():
    spec = nli_spec()
    with_options = TaskRenderer(spec, with_options=True).render(ROW, 0)
    without = TaskRenderer(spec, with_options=False).render(ROW, 0)
    assert with_options.prompt == without.prompt + "\n\nOPTIONS:\n- yes\n- no"
    assert without.prompt == without.input
    assert with_options.target == "yes" and with_options.answer_index == 0
    assert with_options.options == ["yes", "no"] == without.options
    assert with_options.completion == "\n\nyes"


def test_template_level_options_override():
    example = TaskRenderer(nli_spec()).render({**ROW, "label": 1}, 2)
    assert example.options == ["true", "false"]
    assert example.target == "false"
    assert example.prompt.endswith("OPTIONS:\n- true\n- false")


def test_inverted_template_has_no_options_and_targets_a_field():
    example = TaskRenderer(nli_spec()).render(ROW, 3)
    assert example.inverted and example.options == [] and example.answer_index == -1
    assert example.target == ROW["hypothesis"]
    assert "OPTIONS" not in example.prompt
    assert example.references == [ROW["hypothesis"]]


def test_missing_field_names_task_template_row_and_field():
    renderer = TaskRenderer(nli_spec())
    with pytest.raises(FlanError) as info:
        renderer.render({"premise": "x", "label": 0}, 0, split="train", row_index=7)
    message = str(info.value)
    for part in ("toy_nli", "template n1", "train row 7", "'hypothesis'"):
        assert part in message


def test_label_out_of_range_names_the_row():
    with pytest.raises(FlanError, match=r"row 3: label out of range: answer index 5"):
        TaskRenderer(nli_spec()).render({**ROW, "label": 5}, 0, split="train", row_index=3)


def test_sandbox_blocks_attribute_escapes(tmp_path):
    path = write_spec(tmp_path, "qa", "evil", """
task: evil
cluster: qa
type: generation
source: {hub_id: x/y, mirror: evil, splits: {train: train}}
fields: [q]
references: "[q]"
templates:
  - id: t1
    input: "{{ q.__class__.__mro__[1].__subclasses__() }}"
""")
    renderer = TaskRenderer(load_spec(path))
    with pytest.raises(FlanError, match="evil.*t1.*unsafe"):
        renderer.render({"q": "hello"}, 0)


def test_templates_are_compiled_once_not_per_row(monkeypatch):
    renderer = TaskRenderer(nli_spec())
    calls = []
    original = renderer.env.from_string
    monkeypatch.setattr(renderer.env, "from_string", lambda *a, **k: calls.append(a) or original(*a, **k))
    for i in range(50):
        renderer.render(ROW, i % len(renderer.templates))
    assert calls == []


def test_syntax_error_names_file_template_and_line(tmp_path):
    path = write_spec(tmp_path, "qa", "broken", """
task: broken
cluster: qa
type: generation
source: {hub_id: x/y, mirror: broken, splits: {train: train}}
fields: [q]
references: "[q]"
templates:
  - id: fine
    input: "{{ q }}"
  - id: oops
    input: |-
      first line
      {{ q }
""")
    with pytest.raises(FlanError) as info:
        TaskRenderer(load_spec(path))
    message = str(info.value)
    assert "broken.yaml:14" in message and "template oops" in message and "line 2" in message


def test_generation_default_target_is_first_reference():
    spec = load_spec(FIXTURE_TEMPLATES / "qa" / "toy_qa.yaml")
    example = TaskRenderer(spec).render({"question": "Who wrote Hamlet?",
                                         "answers": ["William Shakespeare", "Shakespeare"]}, 0)
    assert example.target == "William Shakespeare"
    assert example.references == ["William Shakespeare", "Shakespeare"]
    assert example.options == [] and example.answer_index == -1


def test_template_expression_syntax_error_is_named_as_such(tmp_path):
    path = write_spec(tmp_path, "qa", "exprs", """
task: exprs
cluster: qa
type: multiple_choice
source: {hub_id: x/y, mirror: exprs, splits: {train: train}}
fields: [q, c, label]
options: c
answer: label
templates:
  - id: t1
    input: "{{ q }}"
    options: "[c[0], c[1]"
""")
    with pytest.raises(FlanError, match="template t1.*syntax error in its options/answer/references"):
        TaskRenderer(load_spec(path))

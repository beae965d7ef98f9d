"""The template engine: sandboxed, strict, compiled once, one OPTIONS switch."""

from __future__ import annotations

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flan_builder.errors import FlanError
from flan_builder.sources import load_split
from flan_builder.specs import load_registry, load_spec
from flan_builder.templating import TaskRenderer, options_suffix
from tests.helpers import FIXTURE_TEMPLATES, SHARED_DATA, requires_shared_data, write_spec

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


def list_options_spec(tmp_path):
    return load_spec(write_spec(tmp_path, "qa", "pairs", """
task: pairs
cluster: qa
type: multiple_choice
source: {hub_id: x/y, mirror: pairs, splits: {train: train}}
fields: [goal, sol1, sol2, label, facts]
options: "[sol1, sol2]"
answer: label
templates:
  - id: plain
    input: "{{ goal }}"
  - id: loop
    input: >-
      {{ goal }}: {% for f in facts %}{{ f.name }}={{ f.value }}{{ ', ' if not loop.last else '.' }}
      {%- endfor %}
  - id: own
    input: "{{ goal }} ({{ answer_choices | length }})"
    options: "[sol2, sol1, goal]"
"""))


PAIR_ROW = {"goal": "Open a jar", "sol1": " twist the lid ", "sol2": "hit it", "label": 0,
            "facts": [{"name": "lid", "value": "tight"}, {"name": "jar", "value": "glass"}]}


def test_render_rows_is_render_per_row(tmp_path):
    renderer = TaskRenderer(list_options_spec(tmp_path))
    rows = [PAIR_ROW, {**PAIR_ROW, "label": 1, "goal": "Cut bread"}]
    batch = renderer.render_rows(rows, [[0, 1, 2], [1]], split="train", row_indices=[4, 9])
    one_by_one = [renderer.render(rows[0], t) for t in (0, 1, 2)] + [renderer.render(rows[1], 1)]
    assert batch == one_by_one
    assert batch[0].options == ["twist the lid", "hit it"] and batch[0].target == "twist the lid"
    assert batch[1].input == "Open a jar: lid=tight, jar=glass."
    assert batch[2].options == ["hit it", "twist the lid", "Open a jar"]
    assert batch[2].input == "Open a jar (3)"
    assert batch[3].target == "hit it"


def test_list_expression_with_a_missing_field_names_it(tmp_path):
    renderer = TaskRenderer(list_options_spec(tmp_path))
    row = {k: v for k, v in PAIR_ROW.items() if k != "sol2"}
    with pytest.raises(FlanError) as info:
        renderer.render_rows([PAIR_ROW, row], [[0], [0]], split="train", row_indices=[4, 9])
    message = str(info.value)
    for part in ("task pairs", "template plain", "train row 9", "missing field 'sol2'"):
        assert part in message, message


def test_a_row_dict_missing_a_key_is_a_missing_field(tmp_path):
    renderer = TaskRenderer(list_options_spec(tmp_path))
    row = {**PAIR_ROW, "facts": [{"name": "lid"}]}
    with pytest.raises(FlanError, match=r"template loop, \? row -1: missing field 'value'"):
        renderer.render(row, 1)


@requires_shared_data
@pytest.mark.parametrize("task", ["digits", "piqa", "gsm8k", "dart", "super_glue_rte", "social_i_qa"])
def test_inputs_equal_jinja_sandbox_on_real_rows(task):
    """The renderer's shortcuts (dict attributes, remembered attribute checks, lighter contexts, list
    expressions) print what Jinja's own immutable sandbox prints from the same context."""
    spec = load_registry().tasks[task]
    rows = load_split(spec, "train" if "train" in spec.source.splits else "eval", SHARED_DATA).take(range(30))
    renderer = TaskRenderer(spec)
    reference = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    n = len(spec.templates)
    examples = renderer.render_rows(rows, [[i % n, (i + 1) % n] for i in range(len(rows))], split="train")
    for i, row in enumerate(rows):
        for example, t in zip(examples[2 * i: 2 * i + 2], (i % n, (i + 1) % n), strict=True):
            template = spec.templates[t]
            ctx = renderer.context(row, renderer.templates[t])
            assert example.input == reference.from_string(template.input).render(ctx).strip(), (task, t, i)
            if spec.has_options and not template.inverted:
                assert example.options == ctx["answer_choices"]
                assert example.target == ctx["correct_choice"]


def test_a_printed_null_is_an_error_and_an_unprinted_one_is_not(tmp_path):
    renderer = TaskRenderer(list_options_spec(tmp_path))
    assert renderer.render({**PAIR_ROW, "facts": None}, 0).input == "Open a jar"  # never printed
    with pytest.raises(FlanError, match=r"template plain, \? row -1: field 'goal' is null"):
        renderer.render({**PAIR_ROW, "goal": None}, 0)
    with pytest.raises(FlanError, match="template loop.*a value it prints is null"):
        renderer.render({**PAIR_ROW, "facts": [{"name": "lid", "value": None}]}, 1)

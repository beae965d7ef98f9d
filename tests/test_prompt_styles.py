"""FLAN's no-template and dataset-name ablations: ``flan build --prompt-style`` (prompt_styles.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import load_from_disk

from flan_builder.build import BuildConfig, build
from flan_builder.errors import FlanError
from flan_builder.mixing import MixingConfig
from flan_builder.prompt_styles import PROMPT_STYLES, raw_input_source, styled_spec
from flan_builder.sources import load_split
from flan_builder.specs import load_spec
from flan_builder.templating import TaskRenderer, options_suffix
from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    SHARED_DATA,
    assert_one_line_error,
    requires_shared_data,
    write_spec,
)


def _rows(spec, role, count):
    rows = load_split(spec, role, SHARED_DATA)
    return rows.take(list(range(count)))


def _render(spec, style, row):
    return TaskRenderer(styled_spec(spec, style)).render(row, 0, split="train", row_index=0)


# -- real rows in each style ---------------------------------------------------------------------

@requires_shared_data
def test_rte_rows_in_each_style(registry):
    spec = registry.task("super_glue_rte")
    for row in _rows(spec, "train", 5):
        answer = ["yes", "no"][row["label"]]
        plain = _render(spec, "no_template", row)
        assert plain.input == f"{row['premise'].strip()}\n{row['hypothesis'].strip()}"
        assert plain.prompt == plain.input + options_suffix(["yes", "no"])
        assert plain.target == answer and plain.completion == "\n\n" + answer
        assert plain.template_id == "no_template" and not plain.inverted
        named = _render(spec, "dataset_name", row)
        assert named.input == f"[super_glue_rte] {plain.input}"
        assert named.target == answer
        instructed = TaskRenderer(spec).render(row, 0)
        assert "Based on the paragraph above" in instructed.input  # rte_01, where the fields came from
        assert "Based on the paragraph above" not in plain.prompt + named.prompt
    unchanged = styled_spec(spec, "instructions")
    assert unchanged is spec


@requires_shared_data
def test_translation_keeps_only_the_source_sentence(registry):
    spec = registry.task("wmt_de_en")
    assert raw_input_source(spec) == "{{ translation.de }}"
    for row in _rows(spec, "train", 5):
        example = _render(spec, "no_template", row)
        assert example.prompt == row["translation"]["de"].strip()  # no "Translate to English"
        assert example.target == row["translation"]["en"].strip()
        assert example.options == []
        assert _render(spec, "dataset_name", row).prompt == f"[wmt_de_en] {example.prompt}"


@requires_shared_data
def test_a_formatted_field_keeps_the_templates_formatting(registry):
    """DART's triples are joined by ' | ' and '; ' inside the template's loop: kept; 'Triple:' is not."""
    spec = registry.task("dart")
    row = _rows(spec, "eval", 1)[0]
    example = _render(spec, "no_template", row)
    assert example.prompt == "; ".join(" | ".join(t) for t in row["tripleset"])
    assert "Triple" not in example.prompt and "sentence" not in example.prompt
    dream = registry.task("dream")
    row = _rows(dream, "train", 1)[0]
    example = _render(dream, "no_template", row)
    assert example.input == "\n".join(row["dialogue"]) + "\n" + row["question"]
    assert example.options == row["choice"] and example.target == row["answer"]


@requires_shared_data
def test_every_shipped_task_renders_a_real_row_in_each_style(registry):
    for spec in registry.tasks.values():
        role = "train" if "train" in spec.source.splits else "eval"
        row = _rows(spec, role, 1)[0]
        instructed = TaskRenderer(spec).render(row, 0)
        for style in ("no_template", "dataset_name"):
            example = _render(spec, style, row)
            assert example.target == instructed.target, (spec.name, style)
            assert example.options == instructed.options
            assert len(example.input) <= len(instructed.input) + len(spec.name) + 3, (spec.name, style)
            if style == "dataset_name":
                assert example.input.startswith(f"[{spec.name}] ")


# -- how the fields are read off a template -------------------------------------------------------

def _spec(tmp_path, template: str, extra: str = ""):
    indented = "\n".join("      " + line for line in template.splitlines())
    return load_spec(write_spec(tmp_path, "qa", "toy", f"""
task: toy
cluster: qa
type: generation
source: {{hub_id: x/toy, mirror: toy, splits: {{train: train}}}}
fields: [a, b, items, answer]
references: "[answer]"
templates:{extra}
  - id: first
    input: |-
{indented}
"""))


@pytest.mark.parametrize(("template", "source", "rendered"), [
    ("Question: {{ a }}\nContext: {{ b }}. Answer it.", "{{ a }}\n{{ b }}", "A\nB"),
    # whitespace control at a field's edge would eat the line break between fields
    ("Read {{- a -}} then {{- b }}!", "{{ a }}\n{{ b }}", "A\nB"),
    # a loop is one field, its literal separators kept; a {% set %} prints nothing, so no line
    ("{% set n = items | length %}Items ({{ n }}): {% for i in items %}{{ i }}{% if not loop.last %}, "
     "{% endif %}{% endfor %}",
     "{% set n = items | length %}{{ n }}\n{% for i in items %}{{ i }}{% if not loop.last %}, "
     "{% endif %}{% endfor %}", "2\nx, y"),
    # comments and {% raw %} text are literal text, like the instruction
    ("{# note #}Say {% raw %}{{ a }}{% endraw %}: {{ b }}", "{{ b }}", "B"),
    ("{% set c %}{{ a }}!{% endset %}Twice: {{ c }} {{ c }}",
     "{% set c %}{{ a }}!{% endset %}{{ c }}\n{{ c }}", "A!\nA!"),
])
def test_fields_are_the_templates_expressions_and_blocks(tmp_path, template, source, rendered):
    spec = _spec(tmp_path, template)
    assert raw_input_source(spec) == source
    row = {"a": "A", "b": "B", "items": ["x", "y"], "answer": "Z"}
    example = _render(spec, "no_template", row)
    assert example.input == rendered and example.target == "Z"


def test_the_first_template_that_is_not_inverted_is_used(tmp_path):
    spec = _spec(tmp_path, "Answer: {{ b }} {{ a }}", extra="""
  - id: turned
    inverted: true
    input: "Write something whose answer is {{ answer }}"
    target: "{{ a }}\"""")
    assert spec.templates[0].id == "turned"
    assert raw_input_source(spec) == "{{ b }}\n{{ a }}"


def test_a_task_with_nothing_to_strip_to_is_a_clear_error(tmp_path):
    spec = _spec(tmp_path, "Just words, no field.")
    with pytest.raises(FlanError, match=r"toy.yaml:\d+ \(task toy, template first\): the template "
                                        "prints no field"):
        styled_spec(spec, "no_template")
    inverted = load_spec(write_spec(tmp_path, "qa", "inv", """
task: inv
cluster: qa
type: generation
source: {hub_id: x/inv, mirror: inv, splits: {train: train}}
fields: [a, answer]
references: "[answer]"
templates:
  - {id: t, inverted: true, input: "Make {{ answer }}", target: "{{ a }}"}
"""))
    with pytest.raises(FlanError, match="task inv.*every template is inverted"):
        styled_spec(inverted, "dataset_name")


def test_a_task_name_with_jinja_in_it_prints_as_written(tmp_path):
    spec = load_spec(write_spec(tmp_path, "qa", "odd", """
task: "odd{{ 7*7 }}"
cluster: qa
type: generation
source: {hub_id: x/odd, mirror: odd, splits: {train: train}}
fields: [a, answer]
references: "[answer]"
templates:
  - {id: t, input: "Q: {{ a }}"}
"""))
    example = _render(spec, "dataset_name", {"a": "A", "answer": "Z"})
    assert example.input == "[odd{{ 7*7 }}] A"


# -- builds ----------------------------------------------------------------------------------------

def _build(out, style, **kwargs):
    config = BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, prompt_style=style,
                         max_eval_rows=kwargs.pop("max_eval_rows", 10),
                         mixing=MixingConfig(total=kwargs.pop("total", 600)), **kwargs)
    return build(config).manifest, load_from_disk(str(out))


@pytest.fixture(scope="module")
def styled_builds(tmp_path_factory):
    if not (SHARED_DATA / "MANIFEST.json").is_file():
        pytest.skip("real data not available")
    root = tmp_path_factory.mktemp("styles")
    tasks = ["glue_sst2", "trec", "wmt_cs_en", "super_glue_copa"]
    return {style: _build(root / style, style, tasks=tasks) for style in PROMPT_STYLES}


@requires_shared_data
def test_only_the_training_rows_change_and_the_manifest_says_how(styled_builds, registry):
    (base, base_rows), *others = (styled_builds[s] for s in PROMPT_STYLES)
    assert base["prompt_style"] == {"style": "instructions"}
    assert base["config"]["prompt_style"] == "instructions"
    for (manifest, rows), style in zip(others, PROMPT_STYLES[1:], strict=True):
        assert manifest["config"]["prompt_style"] == style
        record = manifest["prompt_style"]
        assert record["style"] == style and record["applies_to"] == "train"
        copa_first = registry.task("super_glue_copa").templates[0].id
        assert record["tasks"]["super_glue_copa"]["from_template"] == copa_first
        assert record["tasks"]["wmt_cs_en"]["input"].endswith("{{ translation.cs }}")
        # the same rows are drawn; the held-out split (natural instructions) is byte for byte the same
        assert rows["train"]["source_hash"] == base_rows["train"]["source_hash"]
        same_template = 0
        for row, base_row in zip(rows["train"], base_rows["train"], strict=True):
            # the same target as the template the fields came from (others word their options, or
            # ask for another label, apart)
            if base_row["template_id"] == record["tasks"][row["task"]]["from_template"]:
                assert row["target"] == base_row["target"]
                same_template += 1
        assert same_template > 20
        assert manifest["content_hash"]["heldout"] == base["content_hash"]["heldout"]
        assert manifest["content_hash"]["train"] != base["content_hash"]["train"]
        assert set(rows["train"]["template_id"]) == {style}
        assert not any(rows["train"]["inverted"])
        assert {t: c["count"] for t, c in manifest["templates"].items() if t in record["tasks"]} == \
            dict.fromkeys(record["tasks"], 1)
        per_task = {r["task"]: r["prompt"] for r in rows["train"]}
        copa = per_task["super_glue_copa"]
        assert "What was the" not in copa and "OPTIONS:\n- " in copa  # the OPTIONS switch is its own
        if style == "dataset_name":
            assert all(r["prompt"].startswith(f"[{r['task']}] ") for r in rows["train"])
    assert Counter(base_rows["train"]["inverted"])[True] > 0  # instructions: inverted templates drawn


@requires_shared_data
def test_no_options_combines_with_a_prompt_style(tmp_path):
    manifest, rows = _build(tmp_path / "bare", "no_template", tasks=["super_glue_copa"], total=50,
                            with_options=False)
    assert manifest["with_options"] is False
    assert not any("OPTIONS" in p for p in rows["train"]["prompt"])
    assert all(p.count("\n") == 1 for p in rows["train"]["prompt"])  # premise, then cause/effect


@requires_shared_data
def test_cli_builds_with_a_prompt_style_and_prints_it(tmp_path, capsys):
    from flan_builder.cli import main

    out = tmp_path / "nt"
    code = main(["build", "--heldout", "nli", "--data-dir", str(SHARED_DATA), "--out", str(out),
                 "--tasks", "trec", "--total", "40", "--max-eval-rows", "3",
                 "--prompt-style", "dataset_name"])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("prompt style: dataset_name (training rows only; the held-out rows keep their instructions)"
            in printed)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["prompt_style"] == "dataset_name"
    assert manifest["prompt_style"]["tasks"]["trec"]["input"] == "[trec] {{ text }}"


@pytest.mark.parametrize(("flags", "parts"), [
    (["--prompt-style", "no_template", "--max-templates", "2"],
     ["--prompt-style no_template renders each training row once", "--max-templates"]),
    (["--prompt-style", "dataset_name", "--all-templates"],
     ["--prompt-style dataset_name", "--all-templates"]),
    (["--prompt-style", "no_template", "--formats", "zs_opt,fs_opt"],
     ["--prompt-style no_template builds zero-shot rows in one format", "drop --formats"]),
    (["--prompt-style", "raw"], ["--prompt-style", "invalid choice: 'raw'"]),
])
def test_combinations_that_mean_nothing_are_one_line_errors(tmp_path, capsys, flags, parts):
    from flan_builder.cli import main

    argv = ["build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA), "--templates-dir",
            str(FIXTURE_TEMPLATES), "--no-shipped-templates", "--out", str(tmp_path / "out"), *flags]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own choices check
        code = exc.code
    assert_one_line_error(code, capsys.readouterr().err, *parts)
    assert not (tmp_path / "out").exists()


def test_the_cli_offers_every_style():
    from flan_builder.cli import build_parser

    parser = build_parser()
    build_action = next(a for a in parser._subparsers._group_actions[0].choices["build"]._actions
                        if a.dest == "prompt_style")
    assert tuple(build_action.choices) == PROMPT_STYLES and build_action.default == "instructions"

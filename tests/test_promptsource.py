"""flan templates import-promptsource: promptsource's templates.yaml as our task specs.

Real promptsource files (../shared/data/promptsource) for RTE, SST-2, TREC and AG News are
converted, loaded with our spec loader and rendered on real rows; what they render is checked
against strings written by reading the YAML, and against promptsource's own semantics (render
the whole template with plain Jinja, split at '|||', strip) on every converted template.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2
import pytest

from flan_builder.cli import main
from flan_builder.promptsource import read_promptsource, run_import, survey
from flan_builder.sources import load_split
from flan_builder.specs import load_registry, load_spec
from flan_builder.templating import TaskRenderer
from tests.helpers import SHARED_DATA, assert_one_line_error, requires_shared_data, write_rows

PROMPTSOURCE = SHARED_DATA / "promptsource" / "templates"
MIRRORED = {"super_glue/rte": "super_glue_rte", "glue/sst2": "glue_sst2", "trec": "trec",
            "ag_news": "ag_news"}


def promptsource_apply(jinja: str, choices: str | None, row: dict) -> tuple[list[str], list[str] | None]:
    """promptsource's Template.apply without truncation: render, split at '|||', strip."""
    env = jinja2.Environment()
    env.globals["zip"] = zip
    answer_choices = None
    if choices is not None:
        answer_choices = [c.strip() for c in env.from_string(choices).render(**row).split("|||")]
    rendered = env.from_string(jinja).render(**row, answer_choices=answer_choices)
    return [part.strip() for part in rendered.split("|||")], answer_choices


def import_spec(tmp_path: Path, rel: str, task: str, **kwargs):
    warnings: list[str] = []
    registry = load_registry()
    result, target = run_import(
        PROMPTSOURCE / rel, task, registry=registry, cluster=kwargs.get("cluster"),
        out=tmp_path / "mine", overwrite=False, strict=False,
        data_dir=kwargs.get("data_dir", SHARED_DATA), check_rows=32, warn=warnings.append)
    return result, load_spec(target), warnings


def assert_same_as_promptsource(spec, result, rows: list[dict]) -> int:
    """Every converted template renders what promptsource renders on these rows."""
    renderer = TaskRenderer(spec)
    by_id = {c.id: c.source for c in result.converted}
    compared = 0
    for row_index, row in enumerate(rows):
        for index, template in enumerate(spec.templates):
            ours = renderer.render(row, index, row_index=row_index)
            source = by_id[template.id]
            parts, choices = promptsource_apply(source.jinja, source.answer_choices, row)
            assert parts == [ours.input, ours.target], (template.id, row_index)
            if not template.inverted and choices is not None:
                assert ours.options == choices
                assert ours.options[ours.answer_index] == parts[1]
            compared += 1
    return compared


@requires_shared_data
def test_rte_templates_convert_and_render_as_promptsource_does(tmp_path):
    result, spec, warnings = import_spec(tmp_path, "super_glue/rte", "super_glue_rte")
    assert warnings == []
    assert spec.type == "classification" and spec.cluster == "nli"
    assert len(spec.templates) == 10 and not any(t.inverted for t in spec.templates)
    assert spec.options == ("Yes", "No") and spec.answer == "label"
    row = load_split(spec, "eval", SHARED_DATA).take([0])[0]
    renderer = TaskRenderer(spec)
    # 'GPT-3 style': '{{premise}}\n\nQuestion: {{hypothesis}} True or False? ||| ...' in a
    # single-quoted YAML scalar, whose blank line is one newline; answer_choices True ||| False.
    gpt3 = renderer.render(row, [t.id for t in spec.templates].index("ps_gpt_3_style"))
    assert gpt3.input == ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung "
                          "cancer at age 44, according to the Christopher Reeve Foundation.\n"
                          "Question: Christopher Reeve had an accident. True or False?")
    assert gpt3.target == "False"  # label 1: not entailed
    assert gpt3.options == ["True", "False"] and gpt3.answer_index == 1
    assert gpt3.prompt.endswith("True or False?\n\nOPTIONS:\n- True\n- False")
    crowd = renderer.render(row, [t.id for t in spec.templates].index("ps_mnli_crowdsource"))
    assert crowd.input == ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung "
                           "cancer at age 44, according to the Christopher Reeve Foundation. Using "
                           "only the above description and what you know about the world, is "
                           "\"Christopher Reeve had an accident.\" definitely correct? Yes or no?")
    assert crowd.target == "No"
    rows = load_split(spec, "eval", SHARED_DATA).take(range(40))
    assert assert_same_as_promptsource(spec, result, rows) == 400


@requires_shared_data
def test_sst2_trec_ag_news_render_as_promptsource_does(tmp_path):
    rendered = {}
    for rel in ("glue/sst2", "trec", "ag_news"):
        task = MIRRORED[rel]
        result, spec, _ = import_spec(tmp_path, rel, task)
        rows = load_split(spec, "eval", SHARED_DATA).take(range(40))
        assert assert_same_as_promptsource(spec, result, rows) == 40 * len(spec.templates)
        renderer = TaskRenderer(spec)
        ids = [t.id for t in spec.templates]
        rendered[task] = lambda template, row=rows[0], r=renderer, i=ids: r.render(row, i.index(template))

    # sst2 'review': 'I''m reading a review that says "{{sentence}}".' + two blank lines (two
    # newlines) + 'Do you think the review is {{"positive"}} or {{"negative"}}? ||| ...'
    review = rendered["glue_sst2"]("ps_review")
    assert review.input == ("I'm reading a review that says \"it 's a charming and often affecting "
                            "journey . \".\n\nDo you think the review is positive or negative?")
    assert review.target == "positive" and review.options == ["negative", "positive"]
    assert rendered["glue_sst2"]("ps_said").options == ["sad", "happy"]  # its own answer_choices
    assert rendered["glue_sst2"]("ps_said").target == "happy"
    # trec: the choices joined in the prompt; the coarse label 5 is Quantity
    category = rendered["trec"]("ps_what_category_best_describe")
    assert category.input == ("Categories: Abbreviation, Entity, Description, Person, Location, "
                              "Quantity\n\nWhat category best describes: How far is it from Denver "
                              "to Aspen ? \nAnswer:")
    assert category.target == "Quantity" and category.answer_index == 5
    fine = rendered["trec"]("ps_fine_grained_open")  # 50 fine labels; fine_label 40
    assert len(fine.options) == 50 and fine.target == "distance" and fine.answer_index == 40
    news = rendered["ag_news"]("ps_classify_question_first")
    assert news.input.startswith("What label best describes this news article?\nCard fraud unit")
    assert news.target == "Science and technology"


@requires_shared_data
def test_trec_row_filters_are_skipped_and_counted(tmp_path):
    result, spec, warnings = import_spec(tmp_path, "trec", "trec")
    # 11 fine-grained templates sit wholly inside '{% if coarse_label == N %}': promptsource
    # drops the other rows, and our specs have no row filter
    assert len(result.skipped) == 11 and len(spec.templates) == 7
    assert {s.reason for s in result.skipped} == {"row filter ('|||' inside {% if %})"}
    assert len(warnings) == 11
    assert all("trec/templates.yaml: template 'fine_grained_" in w and "coarse_label ==" in w
               for w in warnings)


@requires_shared_data
def test_imported_specs_build(tmp_path, capsys):
    """The four imported specs, alone on the search path, build a held-out-nli dataset."""
    from datasets import load_from_disk

    for rel, task in MIRRORED.items():
        code = main(["templates", "import-promptsource", str(PROMPTSOURCE / rel), "--task", task,
                     "--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "mine")])
        assert code == 0
    err = capsys.readouterr().err
    assert "imported 10 of 10 templates" in err and "rendered on" in err
    out = tmp_path / "build"
    code = main(["build", "--templates-dir", str(tmp_path / "mine"), "--no-shipped-templates",
                 "--heldout", "nli", "--data-dir", str(SHARED_DATA), "--out", str(out),
                 "--max-per-dataset", "50"])
    assert code == 0
    dataset = load_from_disk(str(out))
    assert {r["task"] for r in dataset["train"]} == {"glue_sst2", "trec"}  # ag_news: no train split
    heldout = dataset["heldout"]
    assert set(heldout["task"]) == {"super_glue_rte"}
    assert len(heldout) == 277 * 10  # every validation row, every template
    assert all(t.startswith("ps_") for t in [*heldout["template_id"], *dataset["train"]["template_id"]])


# -- hand-written files ---------------------------------------------------------------------------

FEATURES = """\
dataset: toy
templates:
  a1: !Template
    answer_choices: '{{ choice1 }} ||| {{ choice2 }}'
    id: a1
    jinja: '{{ premise }}. Then? ||| {% if label == 0 %}{{ choice1 }}{% else %}{{ choice2 }}{% endif %}'
    metadata: !TemplateMetadata {original_task: true, metrics: [Accuracy], languages: [en]}
    name: conditional target
    reference: ''
  a2: !Template
    answer_choices: '{{ options | join("|||") }}'
    id: a2
    jinja: "{{ premise }}\\nOptions: {{ answer_choices | join(', ') }} ||| {{ answer_choices[label] }}"
    metadata: !TemplateMetadata {original_task: true, choices_in_prompt: true}
    name: joined choices
    reference: ''
  a3: !Template
    answer_choices: likely ||| unlikely
    id: a3
    jinja: 'Write a {{ answer_choices[label] }} premise. ||| {{ premise }}'
    metadata: !TemplateMetadata {original_task: false}
    name: write the premise
    reference: ''
  a4: !Template
    id: a4
    jinja: '{% set loud = premise | upper %}Shout it: {{ loud }} ||| {{ loud }}!'
    metadata: !TemplateMetadata {original_task: true}
    name: no choices
    reference: ''
  a5: !Template
    answer_choices: '{{ choice1 }} ||| {{ choice2 }}'
    id: a5
    jinja: '{% if label != -1 %}{% raw %}{{ x }}{% endraw %} {{ premise }}
      ||| {{ answer_choices[label] }}{% endif %}'
    metadata: !TemplateMetadata {original_task: true}
    name: guarded
    reference: ''
  b1: !Template
    answer_choices: '{{ choice1 }} ||| {{ choice2 }}'
    id: b1
    jinja: '{{ [choice1, choice2] | choice }} ||| {{ answer_choices[label] }}'
    metadata: !TemplateMetadata {original_task: true}
    name: random
    reference: ''
  b2: !Template
    id: b2
    jinja: '{% set xs = [] %}{{ xs.append(premise) or "" }}{{ xs[0] }} ||| {{ premise }}'
    metadata: !TemplateMetadata {original_task: false}
    name: appends
    reference: ''
  b3: !Template
    id: b3
    jinja: '{% if label == 0 %}{{ premise }} ||| {{ choice1 }}{% endif %}'
    metadata: !TemplateMetadata {original_task: false}
    name: filter
    reference: ''
  b4: !Template
    id: b4
    jinja: '{{ premise | shout }} ||| {{ choice1 }}'
    metadata: !TemplateMetadata {original_task: false}
    name: unknown filter
    reference: ''
  b5: !Template
    id: b5
    jinja: '{{ premise  ||| {{ choice1 }}'
    metadata: !TemplateMetadata {original_task: false}
    name: broken
    reference: ''
  b6: !Template
    id: b6
    jinja: '{{ premise }} ||| {{ no_such_field }}'
    metadata: !TemplateMetadata {original_task: false}
    name: missing field
    reference: ''
"""
TOY_ROWS = [
    {"premise": "The glass fell", "choice1": "It broke", "choice2": "It flew", "label": 0,
     "options": ["red", " green "]},
    {"premise": "She smiled", "choice1": "He frowned", "choice2": "She was happy", "label": 1,
     "options": ["blue", "yellow"]},
]


def write_toy(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "toy" / "templates.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(FEATURES, encoding="utf-8")
    data = tmp_path / "data"
    write_rows(data, "toy", "train", TOY_ROWS)
    write_rows(data, "toy", "validation", TOY_ROWS)
    return path, data


def test_hand_written_file_converts_what_it_can_and_names_the_rest(tmp_path, capsys):
    path, data = write_toy(tmp_path)
    code = main(["templates", "import-promptsource", str(path), "--task", "toy", "--cluster",
                 "commonsense", "--data-dir", str(data), "--out", str(tmp_path / "mine")])
    err = capsys.readouterr().err
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    reasons = {line.split("'")[1]: line for line in warnings}
    assert set(reasons) == {"random", "appends", "filter", "unknown filter", "broken", "missing field"}
    assert all(f"{path}: template" in line for line in warnings)  # names the file and template
    assert "random choice" in reasons["random"]
    assert "mutates a list or dict" in reasons["appends"] and ".append()" in reasons["appends"]
    assert "row filter" in reasons["filter"] and "label == 0" in reasons["filter"]
    assert "unknown filter or test" in reasons["unknown filter"] and "shout" in reasons["unknown filter"]
    assert "Jinja syntax error" in reasons["broken"]
    assert "fails on real rows: missing field" in reasons["missing field"]
    assert "no_such_field" in reasons["missing field"]
    assert "imported 5 of 11 templates" in err and "6 skipped" in err

    spec = load_spec(tmp_path / "mine" / "commonsense" / "toy.yaml")
    assert spec.type == "multiple_choice" and spec.source.mirror == "toy"
    by_id = {t.id: t for t in spec.templates}
    assert set(by_id) == {"ps_conditional_target", "ps_joined_choices", "ps_write_the_premise",
                          "ps_no_choices", "ps_guarded"}
    assert by_id["ps_write_the_premise"].inverted  # original_task: false
    assert by_id["ps_no_choices"].inverted  # no answer_choices in a task with options
    assert not by_id["ps_conditional_target"].inverted
    # the answer of a target that is not answer_choices[...] is its index among the choices
    assert ".index(" in by_id["ps_conditional_target"].answer
    renderer = TaskRenderer(spec)
    source = {t.name: t for t in read_promptsource(path).templates}
    names = {"ps_conditional_target": "conditional target", "ps_joined_choices": "joined choices",
             "ps_write_the_premise": "write the premise", "ps_no_choices": "no choices",
             "ps_guarded": "guarded"}
    for row in TOY_ROWS:
        for index, template in enumerate(spec.templates):
            ours = renderer.render(row, index)
            ps = source[names[template.id]]
            parts, choices = promptsource_apply(ps.jinja, ps.answer_choices, row)
            assert parts == [ours.input, ours.target], template.id
            if not template.inverted:
                assert ours.options == choices and choices[ours.answer_index] == parts[1]
    first = renderer.render(TOY_ROWS[0], list(by_id).index("ps_joined_choices"))
    assert first.options == ["red", "green"] and first.target == "red"
    assert renderer.render(TOY_ROWS[0], list(by_id).index("ps_guarded")).input == (
        "{{ x }} The glass fell")
    assert renderer.render(TOY_ROWS[1], list(by_id).index("ps_no_choices")).target == "SHE SMILED!"


def test_strict_makes_a_skipped_template_an_error(tmp_path, capsys):
    path, data = write_toy(tmp_path)
    code = main(["templates", "import-promptsource", str(path), "--task", "toy", "--cluster", "x",
                 "--strict", "--out", str(tmp_path / "mine")])
    assert_one_line_error(code, capsys.readouterr().err, str(path), "template 'random' (b1)",
                          "(and 4 more)", "--strict")  # b6 needs rows to fail
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize("text, parts", [
    ("dataset: x\ntemplates:\n  a: !!python/object/apply:os.system ['echo hacked']\n",
     ["templates.yaml:3", "python/object/apply:os.system", "not one promptsource writes"]),
    ("dataset: x\ntemplates:\n  a: !Tempate\n    jinja: 'a ||| b'\n",
     ["templates.yaml:3", "!Tempate"]),
    ("dataset: x\ntemplates: [1, 2]\n", ["not a promptsource templates file"]),
    ("dataset: x\ntemplates:\n  a: !Template\n    jinja: '{{ a | choice }} ||| b'\n    name: only\n",
     ["none of its 1 templates converts", "random choice"]),
])
def test_bad_files_are_one_line_errors(tmp_path, capsys, text, parts):
    path = tmp_path / "templates.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["templates", "import-promptsource", str(path), "--task", "x", "--cluster", "y"])
    captured = capsys.readouterr()
    assert captured.out == ""
    err = "\n".join(line for line in captured.err.splitlines() if "warning" not in line)
    assert_one_line_error(code, err, str(path), *parts)


def test_unknown_task_needs_a_cluster(tmp_path, capsys):
    path, _ = write_toy(tmp_path)
    code = main(["templates", "import-promptsource", str(path), "--task", "toy"])
    assert_one_line_error(code, capsys.readouterr().err, "task 'toy' is not a known task",
                          "--cluster")


def test_survey_adds_up(tmp_path, capsys):
    """Every template of every file is either converted or skipped for a counted reason."""
    root = tmp_path / "ps"
    path, _ = write_toy(tmp_path)
    shutil.copytree(path.parent, root / "toy")
    (root / "bad").mkdir()
    (root / "bad" / "templates.yaml").write_text(
        "dataset: bad\ntemplates:\n  a: !Evil\n    jinja: 'a ||| b'\n", encoding="utf-8")
    if PROMPTSOURCE.is_dir():
        shutil.copytree(PROMPTSOURCE / "super_glue", root / "super_glue")
    report = survey(root, load_registry(), SHARED_DATA if PROMPTSOURCE.is_dir() else None,
                    tmp_path / "scratch")
    assert report.converted_total + report.skipped_total == report.templates
    assert sum(report.file_errors.values()) == 1 and report.templates_in_bad_files == 1
    assert report.skipped["random choice ('choice' / 'random' filter)"] >= 1
    code = main(["templates", "import-promptsource", "--survey", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{report.files} files, {report.templates} templates" in out


@requires_shared_data
@pytest.mark.slow
def test_survey_of_all_279_files_adds_up(tmp_path):
    """The survey the README quotes: every template counted once."""
    report = survey(PROMPTSOURCE, load_registry(), SHARED_DATA, tmp_path)
    assert report.files == 279 and not report.file_errors
    expected = sum(len(read_promptsource(p).templates) for p in PROMPTSOURCE.rglob("templates.yaml"))
    assert report.templates == expected
    assert report.converted_total + report.skipped_total == expected
    assert {"glue/sst2", "super_glue/rte", "trec", "ag_news"} <= set(report.checked_files)
    assert not any(reason.startswith("fails on real rows") for reason in report.skipped)


def test_output_is_refused_when_it_exists(tmp_path, capsys):
    path, _ = write_toy(tmp_path)
    out = tmp_path / "spec.yaml"
    out.write_text("mine", encoding="utf-8")
    code = main(["templates", "import-promptsource", str(path), "--task", "toy", "--cluster", "x",
                 "--out", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, str(out), "--overwrite")
    assert out.read_text(encoding="utf-8") == "mine"


def test_a_hostile_template_neither_hangs_nor_runs(tmp_path, capsys):
    """Constant expressions are never folded outside the sandbox; rendering them is refused."""
    path = tmp_path / "templates.yaml"
    path.write_text(
        "dataset: x\ntemplates:\n"
        "  a: !Template\n    jinja: \"{{ 9 ** 9 ** 9 ** 9 }} {{ premise }} ||| {{ 'a' * 10 ** 12 }}\"\n"
        "    name: huge\n    metadata: !TemplateMetadata {original_task: false}\n"
        "  b: !Template\n    jinja: \"{{ ''.__class__.__mro__ }} {{ premise }} ||| {{ premise }}\"\n"
        "    name: escape\n    metadata: !TemplateMetadata {original_task: false}\n"
        "  c: !Template\n    jinja: '{{ premise }} ||| {{ premise | upper }}'\n    name: fine\n"
        "    metadata: !TemplateMetadata {original_task: true}\n", encoding="utf-8")
    data = tmp_path / "data"
    write_rows(data, "x", "train", TOY_ROWS)
    code = main(["templates", "import-promptsource", str(path), "--task", "x", "--cluster", "y",
                 "--data-dir", str(data), "--out", str(tmp_path / "mine")])
    err = capsys.readouterr().err
    assert code == 0
    assert "template 'huge' (a) skipped: fails on real rows" in err and "more than the limit" in err
    assert "template 'escape' (b) skipped: fails on real rows" in err and "unsafe" in err
    spec = load_spec(tmp_path / "mine" / "y" / "x.yaml")
    assert [t.id for t in spec.templates] == ["ps_fine"] and spec.type == "generation"

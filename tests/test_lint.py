"""``flan templates lint`` catches each defect it promises to, naming task, template and field."""

from __future__ import annotations

import pytest

from flan_builder.cli import main
from flan_builder.lint import lint_rows, lint_static
from flan_builder.specs import load_spec
from tests.helpers import SHARED_DATA, requires_shared_data, write_rows, write_spec

HEADER = """
task: toy
cluster: nli
type: classification
source: {hub_id: x/toy, mirror: toy, splits: {train: train}}
fields: [premise, label]
options: ["yes", "no"]
answer: label
templates:
"""
GOOD = [
    f'  - {{id: g{i}, input: "Premise number {i}: {{{{ premise }}}}. True?"}}'
    for i in range(10)
] + [
    '  - {id: inv1, inverted: true, input: "Write a premise.", target: "{{ premise }}"}',
    '  - {id: inv2, inverted: true, input: "Write any premise please.", target: "{{ premise }}"}',
]
ROWS = [{"premise": "It is raining", "label": 0}, {"premise": "The sun is out", "label": 1}]


def lint(tmp_path, extra_templates: list[str], keep: int = 12):
    text = HEADER + "\n".join(GOOD[:keep] + extra_templates) + "\n"
    spec = load_spec(write_spec(tmp_path / "t", "nli", "toy", text))
    write_rows(tmp_path / "d", "toy", "train", ROWS)
    return [str(i) for i in lint_static(spec) + lint_rows(spec, tmp_path / "d")]


def test_clean_spec_has_no_issues(tmp_path):
    assert lint(tmp_path, []) == []


def test_undefined_field_is_named(tmp_path):
    issues = lint(tmp_path, ['  - {id: bad, input: "{{ premis }} ok?"}'])
    assert len(issues) == 1
    assert issues[0].startswith("toy/bad:") and "'premis'" in issues[0]


def test_empty_target_is_caught(tmp_path):
    issues = lint(tmp_path, ['  - {id: empty, inverted: true, input: "Say nothing.", target: "  "}'])
    assert any(i.startswith("toy/empty:") and "target is empty" in i for i in issues)


def test_target_not_among_options_is_caught(tmp_path):
    issues = lint(tmp_path, ['  - {id: offlist, input: "{{ premise }}?", target: "maybe"}'])
    assert any(i.startswith("toy/offlist:") and "not one of the options" in i for i in issues)


def test_duplicate_template_is_caught(tmp_path):
    dup = '  - {id: copy, input: "Premise number 3:   {{ premise }}. True?"}'
    issues = lint(tmp_path, [dup])
    assert any(i.startswith("toy/copy:") and "duplicate of template g3" in i for i in issues)


def test_too_few_templates_is_caught(tmp_path):
    issues = lint(tmp_path, [GOOD[10], GOOD[11]], keep=5)
    assert any("only 7 template(s)" in i for i in issues)


@pytest.mark.parametrize("text", [
    'Premise: {{ premise }}.nOPTIONS',          # FLAN's lost backslash before a capital
    'Premise: {{ premise }} n Is it true?',     # a lone n
    'Premise: {{ premise }}\\\\nIs it true?',   # a literal backslash-n
])
def test_escape_artefacts_are_caught(tmp_path, text):
    issues = lint(tmp_path, [f'  - {{id: esc, input: "{text}"}}'])
    assert any(i.startswith("toy/esc:") and ("stray 'n'" in i or "literal escape" in i)
               for i in issues), issues


def test_words_with_n_are_not_flagged(tmp_path):
    ok = '  - {id: words, input: "Is n-gram overlap in {{ premise }} not a sign? Don\'t know."}'
    assert lint(tmp_path, [ok]) == []


@requires_shared_data
def test_every_real_template_lints_clean_on_real_rows(capsys):
    code = main(["templates", "lint", "--data-dir", str(SHARED_DATA), "--rows", "24"])
    out = capsys.readouterr().out
    assert code == 0, out
    # 32 shared datasets + 5 scikit-learn tables + 7 chain-of-thought sources + GSM8K
    assert "45 tasks" in out and "0 problems" in out

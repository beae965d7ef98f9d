"""Cross-dataset contamination: held-out rows whose text sits in training rows (13-gram rule).

Real data: WNLI (nli) and SuperGLUE WSC (coreference) are made from the same Winograd
schemas, so holding out nli leaves WNLI's text in WSC's training rows unless the build
checks by content. The recounts here use plain substring search, not the module's index.
"""

from __future__ import annotations

import json
import re

import pytest
from datasets import load_from_disk

from flan_builder.build import BuildConfig, build
from flan_builder.cli import main
from flan_builder.contamination import ContaminationCheck, words
from flan_builder.errors import FlanError
from flan_builder.heldout import plan_split
from flan_builder.specs import load_registry
from tests.helpers import (
    SHARED_DATA,
    TEMPLATES,
    assert_one_line_error,
    requires_shared_data,
    write_rows,
    write_spec,
)

WNLI_FIELDS = ("sentence1", "sentence2")
WSC_FIELDS = ("text", "span1_text", "span2_text")


# -- the rule, on hand-written strings ------------------------------------------------------------

def _overlap(heldout: dict[str, str], train: dict[str, str]) -> bool:
    check = ContaminationCheck([("h", list(heldout), [0], [heldout])])
    return bool(check.scan("t", list(train), [0], [train]))


THIRTEEN = "one two three four five six seven eight nine ten eleven twelve thirteen"


def test_words_are_lower_cased_and_punctuation_is_not_a_word():
    assert words("The Trophy , doesn't fit!") == ["the", "trophy", "doesn", "t", "fit"]
    assert words("Bernard , who") == words("bernard, WHO")


def test_a_thirteen_word_field_matches_only_when_all_thirteen_words_occur():
    assert len(THIRTEEN.split()) == 13
    inside = "Before it: One, two; three four FIVE six seven eight nine ten eleven twelve thirteen. After."
    assert _overlap({"premise": THIRTEEN}, {"text": inside})
    twelve = "one two three four five six seven eight nine ten eleven twelve and more words here"
    assert not _overlap({"premise": THIRTEEN}, {"text": twelve})
    # a 14-word field is checked by its two 13-grams: either one is enough
    fourteen = "zero " + THIRTEEN
    assert _overlap({"premise": fourteen}, {"text": THIRTEEN})
    assert _overlap({"premise": THIRTEEN + " fourteen"}, {"text": THIRTEEN})


def test_a_short_field_is_checked_whole_and_a_very_short_one_not_at_all():
    short = "Jane gave Joan candy because she was hungry."  # 8 words
    assert _overlap({"text": short}, {"sentence1": "JANE gave Joan candy because she was hungry, said Tom."})
    assert not _overlap({"text": short}, {"sentence1": "Jane gave Joan candy because she was tired."})
    # under 8 words (a pronoun, a name, a label): never checked alone, it would match everything
    assert not _overlap({"pronoun": "she", "name": "Jane Smith"}, {"text": short})


def test_an_ngram_must_sit_inside_one_training_field():
    first, second = THIRTEEN.split()[:6], THIRTEEN.split()[6:]
    assert not _overlap({"premise": THIRTEEN}, {"a": " ".join(first), "b": " ".join(second)})
    assert _overlap({"premise": THIRTEEN}, {"a": "x", "b": ["no", THIRTEEN + " yes"]})  # lists too


def test_each_training_row_is_checked_once_and_a_separator_word_in_the_text_is_harmless():
    check = ContaminationCheck([("h", ["premise"], [7], [{"premise": THIRTEEN}])])
    rows = [{"text": "nothing here"}, {"text": "flanbuilderxtextxboundary " + THIRTEEN}]
    assert check.scan("t", ["text"], [3, 4], rows) == {4}
    assert check.scan("t", ["text"], [3, 4], rows) == set()  # seen: not checked again
    assert check.train_rows_checked == 2
    record = check.to_json({"t": ["h"]})
    assert record["heldout"]["h"] == {"rows_checked": 1, "rows_overlapping": 1, "training_rows_dropped": 1,
                                      "training_tasks": {"t": {"heldout_rows": 1, "training_rows": 1,
                                                               "declared": True}}}


def test_bad_mode_is_an_error():
    with pytest.raises(FlanError, match="--contamination must be one of drop, report, fail"):
        ContaminationCheck([], "ignore")


# -- the declared pair in the split rules ---------------------------------------------------------

def test_the_winograd_pair_is_declared_on_either_side(registry):
    assert registry.shares_source("glue_wnli") == {"super_glue_wsc"}
    assert registry.shares_source("super_glue_wsc") == {"glue_wnli"}
    assert plan_split(registry, "nli").shares_source == {"super_glue_wsc": ["glue_wnli"]}
    assert plan_split(registry, "coreference").shares_source == {"glue_wnli": ["super_glue_wsc"]}
    assert plan_split(registry, "sentiment").shares_source == {}


def test_sharing_with_an_unknown_task_names_the_file(tmp_path):
    for path in TEMPLATES.glob("nli/*.yaml"):
        (tmp_path / "nli").mkdir(exist_ok=True)
        (tmp_path / "nli" / path.name).write_bytes(path.read_bytes())
    text = (tmp_path / "nli" / "glue_wnli.yaml").read_text()
    (tmp_path / "nli" / "glue_wnli.yaml").write_text(text.replace("[super_glue_wsc]", "[super_glue_wcs]"))
    with pytest.raises(FlanError, match=r"glue_wnli.yaml: task glue_wnli: shares_source_with names "
                                        r"unknown task\(s\) super_glue_wcs"):
        load_registry(tmp_path)


# -- real data: WNLI held out, WSC in training ----------------------------------------------------

def _read(name: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED_DATA / name / f"{split}.jsonl").open(encoding="utf-8")]


def _norm(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def _probes(row: dict, fields) -> set[str]:
    """The rule written out plainly: 13-word windows, or the whole field at 8-12 words."""
    probes = set()
    for name in fields:
        tokens = re.findall(r"\w+", row[name].lower())
        if len(tokens) >= 13:
            probes |= {" " + " ".join(tokens[i:i + 13]) + " " for i in range(len(tokens) - 12)}
        elif len(tokens) >= 8:
            probes.add(" " + " ".join(tokens) + " ")
    return probes


def _brute_force(heldout_rows, heldout_fields, train_rows, train_fields):
    """(held-out row indices, training row indices) that overlap, by substring search."""
    texts = [[_norm(row[f]) for f in train_fields] for row in train_rows]
    heldout_hit, train_hit = set(), set()
    for h, row in enumerate(heldout_rows):
        probes = _probes(row, heldout_fields)
        for t, fields in enumerate(texts):
            if any(p in text for p in probes for text in fields):
                heldout_hit.add(h)
                train_hit.add(t)
    return heldout_hit, train_hit


@pytest.fixture(scope="module")
def winograd():
    if not (SHARED_DATA / "MANIFEST.json").is_file():
        pytest.skip("real data not available")
    wnli, wsc = _read("glue_wnli", "validation"), _read("super_glue_wsc", "train")
    heldout_hit, train_hit = _brute_force(wnli, WNLI_FIELDS, wsc, WSC_FIELDS)
    probes = set().union(*(_probes(wnli[i], WNLI_FIELDS) for i in heldout_hit))
    return wsc, heldout_hit, train_hit, probes


@pytest.fixture(scope="module")
def nli_default(tmp_path_factory):
    if not (SHARED_DATA / "MANIFEST.json").is_file():
        pytest.skip("real data not available")
    out = tmp_path_factory.mktemp("contamination") / "nli"
    manifest = build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA)).manifest
    return manifest, load_from_disk(str(out))["train"]


@requires_shared_data
def test_holding_out_nli_drops_the_wsc_rows_that_hold_wnli_text(nli_default, winograd):
    manifest, train = nli_default
    wsc, heldout_hit, train_hit, probes = winograd
    assert heldout_hit and train_hit  # the overlap is real
    record = manifest["contamination"]
    assert record["mode"] == "drop" and record["ngram"] == 13
    wnli = record["heldout"]["glue_wnli"]
    assert wnli["rows_checked"] == 71
    assert wnli["rows_overlapping"] == len(heldout_hit)
    assert wnli["training_tasks"] == {"super_glue_wsc": {
        "heldout_rows": len(heldout_hit), "training_rows": len(train_hit), "declared": True}}
    assert wnli["training_rows_dropped"] == len(train_hit)
    assert record["training_rows_dropped"] == {"super_glue_wsc": len(train_hit)}
    assert all(h["rows_overlapping"] == 0 for name, h in record["heldout"].items() if name != "glue_wnli")
    # WSC (554 rows, under the 3,000 rate cap) trains on every row except the overlapping ones
    trained = {i for task, i in zip(train["task"], train["source_index"], strict=True)
               if task == "super_glue_wsc"}
    assert trained == set(range(len(wsc))) - train_hit
    assert manifest["sources"]["super_glue_wsc"]["pool"] == len(wsc) - len(train_hit)
    assert manifest["counts"]["train"]["per_task"]["super_glue_wsc"] == len(wsc) - len(train_hit)
    # and no training prompt of any task holds the text any longer
    corpus = "\n".join(_norm(text) for text in train["input"])
    assert not [p for p in probes if p in corpus]


@requires_shared_data
def test_report_keeps_the_rows_and_counts_them(tmp_path, winograd):
    _, heldout_hit, train_hit, probes = winograd
    out = tmp_path / "report"
    manifest = build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, tasks=["super_glue_wsc"],
                                 contamination="report")).manifest
    record = manifest["contamination"]
    assert record["mode"] == "report" and record["training_rows_dropped"] == {}
    assert record["training_rows_overlapping"] == {"super_glue_wsc": len(train_hit)}
    assert record["heldout"]["glue_wnli"]["rows_overlapping"] == len(heldout_hit)
    assert record["heldout"]["glue_wnli"]["training_rows_dropped"] == 0
    train = load_from_disk(str(out))["train"]
    assert train_hit <= set(train["source_index"])
    corpus = "\n".join(_norm(text) for text in train["input"])
    assert [p for p in probes if p in corpus]  # the text the default build removes is there


@requires_shared_data
def test_fail_exits_2_with_one_line_naming_dataset_count_and_task(tmp_path, capsys, winograd):
    _, heldout_hit, _, _ = winograd
    out = tmp_path / "fail"
    code = main(["build", "--heldout", "nli", "--data-dir", str(SHARED_DATA), "--out", str(out),
                 "--tasks", "super_glue_wsc", "--contamination", "fail"])
    assert_one_line_error(code, capsys.readouterr().err, "held-out glue_wnli",
                          f"{len(heldout_hit)} of 71 rows", "training task super_glue_wsc")
    assert not out.exists()


@requires_shared_data
def test_holding_out_coreference_finds_wsc_text_in_wnli_training_rows(tmp_path, capsys):
    wsc, wnli = _read("super_glue_wsc", "validation"), _read("glue_wnli", "train")
    heldout_hit, train_hit = _brute_force(wsc, WSC_FIELDS, wnli, WNLI_FIELDS)
    code = main(["build", "--heldout", "coreference", "--data-dir", str(SHARED_DATA),
                 "--out", str(tmp_path / "c"), "--tasks", "glue_wnli"])
    out = capsys.readouterr().out
    assert code == 0
    assert (f"super_glue_wsc {len(heldout_hit)}/104 (glue_wnli); {len(train_hit)} training rows dropped"
            in out)
    record = json.loads((tmp_path / "c" / "manifest.json").read_text())["contamination"]
    assert record["heldout"]["super_glue_wsc"]["training_tasks"]["glue_wnli"]["declared"] is True


def test_an_undeclared_overlap_is_found_too(tmp_path):
    # Two hand-made tasks in different clusters that share a sentence and declare nothing.
    sentence = "the committee said the old bridge over the river would close for repairs next spring"
    for cluster, name in (("nli", "held"), ("qa", "trained")):
        write_spec(tmp_path / "t", cluster, name, f"""
task: {name}
cluster: {cluster}
type: generation
source: {{hub_id: x/{name}, mirror: {name}, splits: {{train: train, eval: validation}}}}
fields: [text, answer]
references: "[answer]"
templates:
  - id: only
    input: "{{{{ text }}}}"
    target: "{{{{ answer }}}}"
""")
        rows = [{"text": f"{sentence.upper()}!", "answer": name},
                {"text": f"unrelated {name}", "answer": "b"}]
        write_rows(tmp_path / "d", name, "train", rows)
        write_rows(tmp_path / "d", name, "validation", rows)
    manifest = build(BuildConfig(heldout="nli", out=tmp_path / "o", data_dir=tmp_path / "d",
                                 templates_dir=tmp_path / "t")).manifest
    found = manifest["contamination"]["heldout"]["held"]
    assert found["rows_overlapping"] == 1
    assert found["training_tasks"] == {"trained": {"heldout_rows": 1, "training_rows": 1, "declared": False}}
    assert manifest["counts"]["train"]["per_task"] == {"trained": 1}


def test_training_rows_are_read_a_chunk_at_a_time_and_not_at_all_with_nothing_held_out(monkeypatch):
    from flan_builder import contamination

    monkeypatch.setattr(contamination, "_CHUNK", 3)
    rows = {i: {"text": f"nothing here {i}"} for i in range(9)}
    rows[6] = {"text": "so " + THIRTEEN}
    calls: list[list[int]] = []

    def take(chosen):
        calls.append(list(chosen))
        return [rows[i] for i in chosen]

    check = ContaminationCheck([("h", ["premise"], [7], [{"premise": THIRTEEN}])])
    assert check.scan_rows("t", ["text"], [5, 6, 0, 1, 2, 3, 4, 7, 6], take) == {6}
    assert [len(c) for c in calls] == [3, 3, 2] and sorted(sum(calls, [])) == list(range(8))
    calls.clear()
    assert check.scan_rows("t", ["text"], range(9), take) == set()  # row 8 is the only new one
    assert calls == [[8]]
    assert check.train_rows_checked == 9
    calls.clear()
    nothing_held_out = ContaminationCheck([])
    assert nothing_held_out.scan_rows("t", ["text"], range(8), take) == set() and calls == []
    assert nothing_held_out.train_rows_checked == 8

"""Few-shot prompts and FLAN v2's four formats (zs/fs x opt/noopt) in ``flan build`` and ``flan eval``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import load_from_disk

from flan_builder.build import BuildConfig, build
from flan_builder.errors import FlanError
from flan_builder.fewshot import COLUMNS, FORMATS, FewShotSettings
from flan_builder.manifest import content_hash, row_hash
from flan_builder.mixing import MixingConfig
from flan_builder.sources import load_split
from flan_builder.templating import TaskRenderer
from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    SHARED_DATA,
    assert_one_line_error,
    requires_shared_data,
    write_rows,
    write_spec,
)

ALL = tuple(FORMATS)
SMALL_TASKS = ["glue_sst2", "super_glue_wsc", "trec", "common_gen"]


def _build(out, **kwargs):
    names = ("formats", "shots", "variant", "budget", "tokenizer")
    settings = {k: kwargs.pop(k) for k in names if k in kwargs}
    if "total" in kwargs:
        kwargs["mixing"] = MixingConfig(total=kwargs.pop("total"))
    config = BuildConfig(heldout=kwargs.pop("heldout", "nli"), out=out, data_dir=SHARED_DATA,
                         fewshot=FewShotSettings(**settings), **kwargs)
    manifest = build(config).manifest
    return manifest, load_from_disk(str(out))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """nli held out, four training tasks (WSC shares its source text with held-out WNLI), four formats."""
    if not (SHARED_DATA / "MANIFEST.json").is_file():
        pytest.skip("real data not available")
    out = tmp_path_factory.mktemp("fewshot") / "mixed"
    return out, *_build(out, tasks=SMALL_TASKS, formats=ALL)


def _few_shot_rows(split):
    return [r for r in split if r["format"].startswith("fs")]


@requires_shared_data
def test_exemplars_are_train_rows_never_the_query_nor_a_heldout_row(mixed, registry):
    from flan_builder.contamination import ContaminationCheck

    _, manifest, dataset = mixed
    rows = _few_shot_rows(dataset["train"])
    assert len(rows) > 1000
    heldout_hashes = set(dataset["heldout"]["source_hash"])
    train_splits = {name: load_split(registry.task(name), "train", SHARED_DATA) for name in SMALL_TASKS}
    by_task = Counter()
    for row in rows:
        assert row["exemplar_indices"] and len(row["exemplar_indices"]) == len(row["exemplar_hashes"])
        assert row["source_index"] not in row["exemplar_indices"]
        assert row["source_hash"] not in row["exemplar_hashes"]
        assert heldout_hashes.isdisjoint(row["exemplar_hashes"])
        by_task[row["task"]] += 1
        if by_task[row["task"]] <= 40:  # provenance: the indices are those rows of the train split
            spec = registry.task(row["task"])
            source = train_splits[row["task"]].take(row["exemplar_indices"])
            assert [row_hash({k: r[k] for k in spec.fields}) for r in source] == row["exemplar_hashes"]
            if row["task"] == "glue_sst2":
                assert all(r["sentence"].strip() in row["prompt"] for r in source)
    assert set(by_task) == set(SMALL_TASKS)
    # WSC rows that hold WNLI text are dropped from the pool before exemplars are drawn from it
    dropped = manifest["contamination"]["training_rows_dropped"]
    assert dropped.get("super_glue_wsc", 0) > 0
    heldout = [(name, registry.task(name).fields, list(range(len(rows))), rows)
               for name in manifest["split_plan"]["heldout_tasks"]
               for rows in [load_split(registry.task(name), "eval", SHARED_DATA).all()]]
    check = ContaminationCheck(heldout)
    wsc = registry.task("super_glue_wsc")
    used = sorted({i for r in rows if r["task"] == "super_glue_wsc" for i in r["exemplar_indices"]})
    assert used and not check.scan(wsc.name, wsc.fields, used, train_splits[wsc.name].take(used))


@requires_shared_data
def test_the_draw_is_seeded_and_the_same_in_worker_processes(mixed, tmp_path):
    _, manifest, dataset = mixed
    again, twin = _build(tmp_path / "again", tasks=SMALL_TASKS, formats=ALL, num_proc=2)
    assert again["content_hash"] == manifest["content_hash"]
    assert twin["train"]["exemplar_indices"] == dataset["train"]["exemplar_indices"]
    other, _ = _build(tmp_path / "seed1", tasks=SMALL_TASKS, formats=ALL, seed=1)
    assert other["content_hash"]["train"] != manifest["content_hash"]["train"]


@requires_shared_data
def test_each_format_looks_as_it_says(mixed, registry):
    _, manifest, dataset = mixed
    for row in dataset["train"].select(range(0, len(dataset["train"]), 7)):
        spec = registry.task(row["task"])
        assert spec.templates[row["template_index"]].id == row["template_id"]
        suffix = "\n\nOPTIONS:\n- " + "\n- ".join(row["options"]) if row["options"] else ""
        if row["format"] == "zs_opt":
            assert row["prompt"] == row["input"] + suffix and not row["exemplar_indices"]
        elif row["format"] == "zs_noopt":
            assert row["prompt"] == row["input"] and not row["exemplar_indices"]
        elif row["format"] == "fs_noopt":
            assert "OPTIONS:" not in row["prompt"] or "OPTIONS:" in row["input"]
        assert row["completion"].endswith(row["target"]) and not row["completion"][:1].strip()
    counts = manifest["formats"]
    assert counts["per_format"] == dict(sorted(Counter(dataset["train"]["format"]).items()))
    assert set(dataset["heldout"]["format"]) == {"zs_opt"}  # the held-out split stays zero-shot
    assert manifest["content_hash_columns"][-len(COLUMNS):] == list(COLUMNS)


@requires_shared_data
def test_four_formats_a_quarter_each_on_a_real_build(tmp_path):
    manifest, dataset = _build(tmp_path / "quarters", formats=ALL, total=8000, max_eval_rows=5)
    counts = manifest["formats"]
    assert sum(counts["drawn"].values()) == len(dataset["train"]) == 8000
    for fmt in ALL:
        assert abs(counts["drawn"][fmt] / 8000 - 0.25) < 0.025, counts["drawn"]
        assert abs(counts["per_format"][fmt] / 8000 - 0.25) < 0.03, counts["per_format"]
    assert 4.5 < counts["average_shots"] <= 5  # mix: 5 drawn, a few pruned by the budget
    made = Counter(dataset["train"]["format"])
    assert dict(made) == counts["per_format"]
    # a row kept zero-shot moves from fs_ to zs_ with the same OPTIONS switch, and is counted
    assert counts["kept_zero_shot_total"] == (counts["drawn"]["fs_opt"] + counts["drawn"]["fs_noopt"]
                                              - made["fs_opt"] - made["fs_noopt"])


@requires_shared_data
def test_the_default_build_is_zero_shot_and_hashes_as_before(tmp_path):
    plain, plain_rows = _build(tmp_path / "default", tasks=["glue_sst2", "trec"], max_eval_rows=20)
    named, _ = _build(tmp_path / "zs_opt", tasks=["glue_sst2", "trec"], max_eval_rows=20, formats=("zs_opt",))
    assert plain["content_hash"] == named["content_hash"]
    train = plain_rows["train"]
    assert set(train["format"]) == {"zs_opt"} and not any(train["exemplar_indices"])
    assert plain["formats"]["few_shot_rows"] == 0 and plain["formats"]["per_format"] == {"zs_opt": len(train)}
    # the hash covers the columns earlier builds had, so their hashes still hold
    assert not set(COLUMNS) & set(plain["content_hash_columns"])
    columns = plain["content_hash_columns"]
    assert content_hash({k: r[k] for k in columns} for r in train) == plain["content_hash"]["train"]
    mixed, mixed_rows = _build(tmp_path / "two", tasks=["glue_sst2", "trec"], max_eval_rows=20,
                               formats=("zs_opt", "zs_noopt"))
    assert set(COLUMNS) <= set(mixed["content_hash_columns"])
    assert content_hash(dict(r) for r in mixed_rows["train"]) == mixed["content_hash"]["train"]


@requires_shared_data
def test_x_shot_keeps_only_exemplars_of_the_querys_template(tmp_path, registry):
    manifest, dataset = _build(tmp_path / "xshot", tasks=["glue_sst2"], formats=("fs_opt", "zs_opt"),
                               variant="x_shot", total=1500, max_eval_rows=5)
    counts = manifest["formats"]
    assert counts["shots"] == 25
    spec = registry.task("glue_sst2")
    renderer = TaskRenderer(spec)
    train = load_split(spec, "train", SHARED_DATA)
    rows = _few_shot_rows(dataset["train"])
    shots = [len(r["exemplar_indices"]) for r in rows]
    # 25 candidates, each with one of 13 templates: about 25/13 kept (rows that keep none are zero-shot)
    assert 1 <= sum(shots) / len(shots) < 4 and max(shots) < 25
    assert counts["average_shots"] == round(sum(shots) / len(shots), 3)
    assert counts["kept_zero_shot"]["glue_sst2"]["no_same_template"] == counts["drawn"]["fs_opt"] - len(rows)
    seen = set()
    for row in rows[:400]:
        template = spec.templates[row["template_index"]]
        prefix = template.fewshot.get("input_prefix", "")
        target_prefix = template.fewshot.get("target_prefix", "")
        delimiter = template.fewshot.get("delimiter", "\n\n")
        separator = template.fewshot.get("separator", "\n\n\n")
        blocks = []  # every exemplar rendered with the query's own template, in its layout
        for index, source in zip(row["exemplar_indices"], train.take(row["exemplar_indices"]), strict=True):
            example = renderer.render(source, row["template_index"], split="train", row_index=index)
            blocks.append(prefix + example.prompt + delimiter + target_prefix + example.target + separator)
        suffix = "\n\nOPTIONS:\n- " + "\n- ".join(row["options"]) if row["options"] else ""
        query = prefix + row["input"] + suffix + delimiter + target_prefix
        assert row["prompt"] == "".join(blocks) + query.rstrip()
        assert row["completion"] == query[len(query.rstrip()):] + row["target"]
        seen.add(template.id)
    assert {"sst2_04", "sst2_inv_01", "sst2_inv_02"} & seen  # templates with their own prefixes


@requires_shared_data
def test_pruning_to_a_token_budget_with_the_models_tokenizer(tmp_path, tokenizer, capsys):
    budget = 400
    manifest, dataset = _build(tmp_path / "budget", tasks=["aeslc", "glue_sst2"], formats=("fs_opt",),
                               total=600, max_eval_rows=5, budget=budget, tokenizer="smollm2-135m")
    counts = manifest["formats"]
    assert counts["budget"] == budget and "smollm2-135m" in counts["budget_unit"]

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = _few_shot_rows(dataset["train"])
    shots = Counter(len(r["exemplar_indices"]) for r in rows)
    assert shots[5] and sum(n for k, n in shots.items() if k < 5)  # some full, some pruned
    assert all(tokens(r["prompt"]) <= budget for r in rows)
    # long aeslc emails: the query alone can be over the budget; such rows stay zero-shot, counted, warned
    over = counts["kept_zero_shot"]["aeslc"]["query_over_budget"]
    assert over > 0 and counts["kept_zero_shot_total"] == len(dataset["train"]) - len(rows)
    warning = next(line for line in capsys.readouterr().err.splitlines()
                   if "query alone is over the budget" in line)
    assert f"task aeslc: {over:,} few-shot rows kept zero-shot" in warning
    template, index = warning.split("(first: template ")[1].rstrip(")").split(", train row ")
    row = next(r for r in dataset["train"]
               if r["template_id"] == template and r["source_index"] == int(index))
    assert row["format"] == "zs_opt" and tokens(row["prompt"]) > budget


def test_a_task_with_one_train_row_has_no_exemplars(tmp_path, capsys):
    root, data = tmp_path / "templates", tmp_path / "data"
    write_spec(root, "sentiment", "lonely", """
task: lonely
cluster: sentiment
type: classification
source: {hub_id: x/lonely, mirror: lonely, splits: {train: train}}
fields: [text, label]
options: ["bad", "good"]
answer: label
templates:
  - id: l1
    input: "{{ text }} Good or bad?"
""")
    write_spec(root, "sentiment", "plenty", """
task: plenty
cluster: sentiment
type: classification
source: {hub_id: x/plenty, mirror: plenty, splits: {train: train}}
fields: [text, label]
options: ["bad", "good"]
answer: label
templates:
  - id: p1
    input: "{{ text }} Good or bad?"
""")
    write_rows(data, "lonely", "train", [{"text": "only one", "label": 1}])
    write_rows(data, "plenty", "train", [{"text": f"row {i}", "label": i % 2} for i in range(40)])

    def run(name, formats):
        return build(BuildConfig(heldout="none", out=tmp_path / name, data_dir=data, templates_dir=root,
                                 fewshot=FewShotSettings(formats=formats, shots=2))).manifest

    manifest = run("mixed", ("zs_opt", "fs_opt"))
    assert manifest["formats"]["tasks_without_exemplars"] == ["lonely"]
    assert "task lonely: its train split has 1 row(s)" in capsys.readouterr().err
    rows = load_from_disk(str(tmp_path / "mixed"))["train"]
    assert {r["format"] for r in rows if r["task"] == "lonely"} == {"zs_opt"}
    plenty = [r for r in rows if r["task"] == "plenty"]
    assert any(r["format"] == "fs_opt" and len(r["exemplar_indices"]) == 2 for r in plenty)
    # 40 rows, 3 drawn per few-shot row: the query is often among them and must be left out
    assert all(r["source_index"] not in r["exemplar_indices"] for r in plenty)
    with pytest.raises(FlanError, match="task lonely: its train split has 1 row.*add zs_opt / zs_noopt"):
        run("only-few", ("fs_opt",))


@pytest.mark.parametrize(("flags", "parts"), [
    (["--formats", "fs_opt,zs_nope"], ["unknown format(s) zs_nope", "zs_opt, zs_noopt, fs_opt, fs_noopt"]),
    (["--formats", "fs_opt", "--shots", "-1"], ["--shots must be 0 or more", "-1"]),
    (["--formats", "fs_opt", "--shots", "0"], ["--shots 0 leaves fs_opt without exemplars"]),
    (["--formats", "fs_opt,fs_opt"], ["names a format twice"]),
    (["--formats", "fs_noopt", "--no-options"], ["--no-options and --formats together"]),
])
def test_bad_format_requests_are_one_line_errors(tmp_path, capsys, flags, parts):
    from flan_builder.cli import main

    code = main(["build", "--heldout", "nli", "--data-dir", str(FIXTURE_DATA), "--templates-dir",
                 str(FIXTURE_TEMPLATES), "--no-shipped-templates", "--out", str(tmp_path / "out"), *flags])
    assert_one_line_error(code, capsys.readouterr().err, *parts)
    assert not (tmp_path / "out").exists()


def test_a_bad_fewshot_mapping_in_a_spec_names_the_template(tmp_path):
    from flan_builder.specs import load_registry

    write_spec(tmp_path, "sentiment", "odd", """
task: odd
cluster: sentiment
type: classification
source: {hub_id: x/odd, mirror: odd, splits: {train: train}}
fields: [text, label]
options: ["bad", "good"]
answer: label
templates:
  - id: o1
    input: "{{ text }}"
    fewshot: {input_prefx: "Q: "}
""")
    with pytest.raises(FlanError, match=r"odd.yaml.*unknown key\(s\) input_prefx in fewshot of template o1"):
        load_registry(tmp_path)


def test_eval_with_two_shots_puts_two_train_exemplars_before_each_query(tmp_path, tiny_model_dir, toy_build):
    pytest.importorskip("torch")
    from flan_builder.cli import main
    from flan_builder.specs import load_registry

    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(toy_build), "--out", str(out),
                 "--shots", "2", "--log-samples", "--templates", "2", "--options", "both"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["shots"] == 2 and results["records"]
    spec = load_registry(FIXTURE_TEMPLATES).task("toy_nli")
    renderer = TaskRenderer(spec)
    train = load_split(spec, "train", FIXTURE_DATA).all()
    heldout = {(r["template_id"], r["source_index"]): r for r in load_from_disk(str(toy_build))["heldout"]}
    drawn: dict[int, list[int]] = {}
    for record in results["records"]:
        assert record["shots"] == record["shots_used"] == 2
        index = spec.templates.index(spec.template(record["template"]))
        shown = {}
        for i, row in enumerate(train):
            example = renderer.render(row, index, split="train", row_index=i)
            text = example.prompt if record["options"] else example.input
            shown[text + "\n\n" + example.target] = i
        lines = (out / record["samples"]).read_text(encoding="utf-8").splitlines()
        for sample in map(json.loads, lines):
            *exemplars, query = sample["prompt"].split("\n\n\n")
            assert len(exemplars) == 2 and all(e in shown for e in exemplars)
            own = heldout[(record["template"], sample["source_index"])]
            assert query == (own["prompt"] if record["options"] else own["input"])
            assert sample["separator"] == "\n\n"
            # the same train rows for a held-out row under every template and OPTIONS setting
            rows = [shown[e] for e in exemplars]
            assert drawn.setdefault(sample["source_index"], rows) == rows
    assert len(drawn) == 4 and len({tuple(r) for r in drawn.values()}) > 1


def test_eval_shots_below_zero_is_a_one_line_error(tmp_path, toy_build, capsys):
    from flan_builder.cli import main

    code = main(["eval", "--model", "x", "--data", str(toy_build), "--out", str(tmp_path / "r"),
                 "--shots", "-2"])
    assert_one_line_error(code, capsys.readouterr().err, "--shots -2")

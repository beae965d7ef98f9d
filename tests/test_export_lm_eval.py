"""`flan export lm-eval`: lm-evaluation-harness tasks with flan eval's rows, prompts, choices,
target delimiter and metrics; lm-eval itself (where installed) scores them as flan eval does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    SHARED_DATA,
    assert_one_line_error,
    requires_shared_data,
)

RTE_TEMPLATES = ["rte_01", "rte_02", "rte_03"]
EVAL_ROWS = 60  # the build's seeded sample of held-out rows per dataset; the export draws the same


class _Loader(yaml.SafeLoader):
    """Reads the exported YAML as lm-eval does, ``!function`` kept as a marked string."""


_Loader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _export(out: Path, **kwargs):
    from flan_builder.evaluation.export import ExportConfig, export_lm_eval

    return export_lm_eval(ExportConfig(out=out, **kwargs))


@pytest.fixture(scope="module")
def nli_build(tmp_path_factory) -> Path:
    """nli held out from the real data (60 seeded rows per dataset); a little sst2 to train on."""
    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig

    out = tmp_path_factory.mktemp("builds") / "nli"
    build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, tasks=["glue_sst2"],
                      mixing=MixingConfig(total=50), max_eval_rows=EVAL_ROWS))
    return out


@requires_shared_data
def test_rte_exports_one_task_per_template_and_groups_with_the_builds_rows_and_prompts(tmp_path, nli_build):
    from datasets import load_from_disk

    from flan_builder.evaluation.rows import sample_order

    out = tmp_path / "lm-eval"
    manifest = _export(out, data_dir=SHARED_DATA, tasks=["super_glue_rte"], templates=3,
                       options=(True, False), separator=" ", max_eval_rows=EVAL_ROWS)
    entry = manifest["tasks"]["super_glue_rte"]
    assert entry["templates"] == RTE_TEMPLATES
    assert entry["rows"] == EVAL_ROWS and entry["rows_available"] == 277
    assert manifest["lm_eval_tasks"] == 6 and manifest["cluster_groups"] == {
        "flan_nli": ["flan_super_glue_rte"], "flan_nli_no_options": ["flan_super_glue_rte_no_options"]}
    folder = out / "super_glue_rte"
    built = [r for r in load_from_disk(str(nli_build))["heldout"].to_list() if r["task"] == "super_glue_rte"]
    mirror = [json.loads(line) for line in (SHARED_DATA / "super_glue_rte" / "validation.jsonl").open()]
    for template in RTE_TEMPLATES:
        task = _load(folder / f"flan_super_glue_rte_{template}.yaml")
        bare = _load(folder / f"flan_super_glue_rte_{template}_no_options.yaml")
        assert task["task"] == f"flan_super_glue_rte_{template}" and task["output_type"] == "multiple_choice"
        fields = (task["doc_to_text"], task["doc_to_choice"], task["doc_to_target"])
        assert fields == ("prompt", "choices", "gold")
        assert task["target_delimiter"] == " " and task["num_fewshot"] == 0 and task["dataset_path"] == "json"
        assert [m["metric"] for m in task["metric_list"]] == ["acc", "acc_norm"]
        data = Path(task["dataset_kwargs"]["data_files"][task["test_split"]])
        assert data.is_absolute() and data.parent == folder.resolve()
        docs, bare_docs = _jsonl(data), _jsonl(Path(bare["dataset_kwargs"]["data_files"]["test"]))
        # the build's rows and prompts, in the order flan eval --limit takes them (its seeded sample)
        by_index = {r["source_index"]: r for r in built if r["template_id"] == template}
        rows = [by_index[i] for i in sample_order("super_glue_rte", by_index)]
        assert [r["source_index"] for r in rows] != sorted(by_index)  # not the source order
        assert [d["source_index"] for d in docs] == [r["source_index"] for r in rows]
        assert [d["prompt"] for d in docs] == [r["prompt"] for r in rows]
        assert [d["prompt"] for d in bare_docs] == [r["input"] for r in rows]
        for doc, bare_doc in zip(docs, bare_docs, strict=True):
            row = mirror[doc["source_index"]]
            assert doc["choices"] == ["yes", "no"] and doc["gold"] == row["label"] == bare_doc["gold"]
            assert row["premise"] in doc["prompt"]
            assert doc["prompt"] == bare_doc["prompt"] + "\n\nOPTIONS:\n- yes\n- no"
    group = _load(folder / "_flan_super_glue_rte.yaml")
    assert group["task"] == [f"flan_super_glue_rte_{t}" for t in RTE_TEMPLATES]
    assert group["aggregate_metric_list"] == [{"metric": m, "aggregation": "mean", "weight_by_size": False}
                                              for m in ("acc", "acc_norm")]
    assert _load(out / "_flan_nli.yaml")["task"] == ["flan_super_glue_rte"]
    assert json.loads((out / "manifest.json").read_text())["config"]["separator"] == " "


def test_generation_tasks_are_scored_by_flan_evals_own_metric_module(tmp_path):
    import evaluate

    from flan_builder.evaluation.metrics import metric
    from flan_builder.specs import load_registry

    out = tmp_path / "lm-eval"
    _export(out, data_dir=FIXTURE_DATA, tasks=["toy_qa"], templates_dir=FIXTURE_TEMPLATES)
    task = _load(out / "toy_qa" / "flan_toy_qa_q1.yaml")
    registry = load_registry(FIXTURE_TEMPLATES)
    evaluation = registry.evaluation(registry.task("toy_qa"))
    assert task["output_type"] == "generate_until" and task["doc_to_target"] == "references"
    assert task["generation_kwargs"] == {"until": list(evaluation.stop), "do_sample": False,
                                         "max_gen_toks": evaluation.max_new_tokens}
    assert task["process_results"] == ("!function", "utils.process_results")
    assert [(m["metric"], m["aggregation"]) for m in task["metric_list"]] == [
        ("exact_match", ("!function", "utils.exact_match")), ("f1", ("!function", "utils.f1"))]
    assert not (out / "toy_qa" / "flan_toy_qa_q_inv1.yaml").exists()  # flan eval skips inverted templates
    spec = importlib.util.spec_from_file_location("exported_utils", out / "toy_qa" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = _jsonl(out / "toy_qa" / "q1.jsonl")
    answers = [f" The {docs[0]['references'][0]}.\n", "no idea"]  # answers are stripped, as flan eval does
    items = [utils.process_results(doc, [answer])["f1"] for doc, answer in zip(docs, answers, strict=True)]
    expected = evaluate.load(str(metric("flan_qa").path)).compute(
        predictions=[a.strip() for a in answers], references=[d["references"] for d in docs])
    assert utils.exact_match(items) == expected["exact_match"] == 50.0
    assert utils.f1(items) == expected["f1"]


def test_bad_input_is_one_line(tmp_path, capsys):
    from flan_builder.cli import main

    base = ["export", "lm-eval", "--data-dir", str(FIXTURE_DATA), "--templates-dir", str(FIXTURE_TEMPLATES)]
    out = ["--out", str(tmp_path / "a")]
    cases = [([*base, *out, "--tasks", "no_such_task"], ("unknown task", "no_such_task")),
             ([*base, *out, "--cluster", "nope"], ("unknown cluster", "nope")),
             ([*base, *out, "--tasks", "toy_nli", "--separator", "\\x4"], ("--separator",))]
    for args, parts in cases:
        assert_one_line_error(main(args), capsys.readouterr().err, *parts)
        assert not (tmp_path / "a").exists()
    done = tmp_path / "done"
    assert main([*base, "--out", str(done), "--tasks", "toy_nli"]) == 0
    capsys.readouterr()
    assert_one_line_error(main([*base, "--out", str(done), "--tasks", "toy_nli"]), capsys.readouterr().err,
                          "already exists", "--overwrite")


# -- lm-eval itself ------------------------------------------------------------------------------

def _lm_eval(out: Path, tasks: list[str], model_dir: Path, limit: int | None, batch_size: int):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = HFLM(pretrained=str(model_dir), batch_size=batch_size, device="cpu")
    return simple_evaluate(model=model, tasks=tasks,
                           task_manager=TaskManager(include_path=str(out), include_defaults=False),
                           limit=limit, bootstrap_iters=0, log_samples=True)


@pytest.mark.slow
@requires_shared_data
@pytest.mark.parametrize("separator", [" ", "\n\n"])
def test_lm_eval_scores_the_export_as_flan_eval_does(tmp_path, nli_build, tiny_model_dir, separator):
    """lm-eval's acc equals flan eval's on the same 20 rows. With " " (lm-eval's delimiter) the option
    log-likelihoods and acc_norm agree too; with "\\n\\n" lm-eval also scores the separator's tokens,
    the same amount for every option of a row, so acc agrees and acc_norm may not (README)."""
    pytest.importorskip("lm_eval")
    from flan_builder.evaluation.evaluator import EvalConfig, evaluate_models

    limit = 20
    flan = evaluate_models(EvalConfig(models=[str(tiny_model_dir)], data=nli_build, out=tmp_path / "report",
                                      tasks=["super_glue_rte"], templates=2, limit=limit,
                                      options=(True, False), separator=separator, log_samples=True,
                                      batch_size=4))
    out = tmp_path / "lm-eval"
    _export(out, data_dir=SHARED_DATA, tasks=["super_glue_rte"], templates=2, options=(True, False),
            separator=separator, max_eval_rows=EVAL_ROWS)
    groups = ["flan_super_glue_rte", "flan_super_glue_rte_no_options"]
    theirs = _lm_eval(out, groups, tiny_model_dir, limit, batch_size=8)
    results = theirs["results"]
    for record in flan["records"]:
        name = f"flan_super_glue_rte_{record['template']}{'' if record['options'] else '_no_options'}"
        assert results[name]["acc,none"] * 100 == pytest.approx(record["scores"]["acc"], abs=1e-9), name
        ours = _jsonl(tmp_path / "report" / record["samples"])
        # the same rows (the export lists them in --limit's order, flan eval reports source order)
        samples = sorted(theirs["samples"][name], key=lambda s: s["doc"]["source_index"])
        assert [s["doc"]["source_index"] for s in samples] == [o["source_index"] for o in ours]
        assert [s["doc"]["prompt"] for s in samples] == [o["prompt"] for o in ours]
        assert [s["acc"] for s in samples] == [o["acc"] for o in ours], name
        for sample, row in zip(samples, ours, strict=True):
            gaps = [resp[0][0] - option["logprob"] for resp, option in zip(sample["resps"], row["options"],
                                                                            strict=True)]
            if separator == " ":  # the same tokens scored: the same numbers
                assert gaps == pytest.approx([0.0] * len(gaps), abs=1e-4), name
            else:  # lm-eval adds the separator's log-likelihood, one amount for every option
                assert gaps[0] < -1e-3 and gaps == pytest.approx([gaps[0]] * len(gaps), abs=1e-4), name
        if separator == " ":
            assert results[name]["acc_norm,none"] * 100 == pytest.approx(record["scores"]["acc_norm"],
                                                                          abs=1e-9)
    dataset = next(d for d in flan["datasets"] if d["options"])
    assert results["flan_super_glue_rte"]["acc,none"] * 100 == pytest.approx(dataset["mean"], abs=1e-9)


@pytest.mark.slow
def test_lm_eval_generates_the_same_answers_as_flan_eval(tmp_path, tiny_model_dir):
    """A generation task: the same prompts, stop rule and token budget give the same greedy answers
    and flan eval's exact match and F1, computed inside lm-eval by the exported hooks."""
    pytest.importorskip("lm_eval")
    from flan_builder.build import BuildConfig, build
    from flan_builder.evaluation.evaluator import EvalConfig, evaluate_models
    from flan_builder.specs import load_registry

    data = tmp_path / "qa"
    build(BuildConfig(heldout="qa", out=data, data_dir=FIXTURE_DATA, templates_dir=FIXTURE_TEMPLATES),
          registry=load_registry(FIXTURE_TEMPLATES))
    flan = evaluate_models(EvalConfig(models=[str(tiny_model_dir)], data=data, out=tmp_path / "report",
                                      log_samples=True, batch_size=1))
    out = tmp_path / "lm-eval"
    _export(out, data_dir=FIXTURE_DATA, tasks=["toy_qa"], templates_dir=FIXTURE_TEMPLATES)
    # one row at a time in both, unpadded, so greedy decoding breaks near-ties alike
    theirs = _lm_eval(out, ["flan_toy_qa"], tiny_model_dir, None, batch_size=1)
    for record in flan["records"]:
        name = f"flan_toy_qa_{record['template']}"
        ours = _jsonl(tmp_path / "report" / record["samples"])
        # the same rows (the export lists them in --limit's order, flan eval reports source order)
        samples = sorted(theirs["samples"][name], key=lambda s: s["doc"]["source_index"])
        assert [s["filtered_resps"][0].strip() for s in samples] == [o["answer"] for o in ours], name
        for key in ("exact_match", "f1"):
            assert theirs["results"][name][f"{key},none"] == pytest.approx(record["scores"][key], abs=1e-9)

"""`flan compare`: every tuning method and in-context learning on the same held-out job, one report.

The model is a 2-layer random Llama with the real SmolLM2 tokenizer; the data a small build of real
datasets (sst2 and trec to train on, rte and cb held out). Each method trains in its own `flan train`
process, as in a real comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, SHARED_DATA, assert_one_line_error, requires_shared_data, tiny_config

pytest.importorskip("torch")
pytest.importorskip("trl")

SMALL_SFT = {"max_steps": 3, "per_device_train_batch_size": 16, "logging_steps": 1, "save_steps": 100,
             "max_length": 96, "disable_tqdm": True, "dataloader_num_workers": 0}


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """16 training rows (8 sst2, 8 trec): a batch of 16 is the whole mixture, the same every step."""
    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig

    out = tmp_path_factory.mktemp("compare") / "nli"
    build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA,
                      tasks=["glue_sst2", "trec", "super_glue_rte", "super_glue_cb"],
                      mixing=MixingConfig(max_per_dataset=8), max_eval_rows=3))
    return out


def _recipe(tmp_path: Path, model: Path, data: Path, compare: dict, name: str = "cmp") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(model), "heldout": "nli", "output": str(tmp_path / name), "dataset": {"path": str(data)},
        "compare": compare, "sft": SMALL_SFT}), encoding="utf-8")
    return path


def _compare(path: Path, *extra: str) -> int:
    from flan_builder.cli import main

    return main(["compare", str(path), *extra])


# -- did it train? -------------------------------------------------------------------------------

def test_a_nan_flat_or_rising_loss_is_did_not_train():
    from flan_builder.compare.run import training_status

    assert training_status([[1, 3.0], [2, 2.5], [3, 2.0], [4, 1.8]])["trained"] is True
    nan = training_status([[1, 3.0], [2, math.nan], [3, 2.0]])
    assert nan["trained"] is False and nan["reason"] == "nan" and "step 2" in nan["status"]
    assert training_status([[1, 3.0], [2, math.inf]])["reason"] == "nan"
    flat = training_status([[1, 3.0], [2, 2.99], [3, 3.01], [4, 2.985]])
    assert flat["trained"] is False and flat["reason"] == "flat"
    assert flat["status"].startswith("did not train")
    assert training_status([[1, 2.0], [2, 2.5], [3, 3.0], [4, 3.5]])["reason"] == "rose"
    assert training_status([[1, 2.0]])["trained"] is None


# -- the whole comparison ------------------------------------------------------------------------

@requires_shared_data
@pytest.mark.slow
def test_methods_train_on_the_same_batches_and_are_scored_on_the_same_rows(tmp_path, tiny_model_dir,
                                                                          small_build, capsys):
    from flan_builder.compare.methods import PAPER_SETTINGS
    from flan_builder.compare.report import COLUMNS

    methods = ["lora", "ia3", "prompt_tuning"]
    recipe = _recipe(tmp_path, tiny_model_dir, small_build, {
        "methods": methods,
        "eval": {"limit": 2, "templates": 2, "shots": [0, 1, 2],
                 "tasks": ["super_glue_rte", "super_glue_cb"]}})
    assert _compare(recipe) == 0
    out = tmp_path / "cmp"
    results = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == ["base", "icl-k1", "icl-k2", *methods]

    seen = set()
    for method in methods:
        row, run = rows[method], out / "runs" / method
        manifest = json.loads((run / "run.json").read_text())
        assert row["trainable"] == manifest["parameters"]["trainable"] > 0
        assert row["trainable_pct"] == pytest.approx(100 * manifest["parameters"]["fraction"])
        assert row["peak_memory_mb"] == manifest["peak_memory_mb"] > 0
        assert row["wall_time_s"] == manifest["wall_time_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(manifest["tokens_seen"] / manifest["wall_time_s"])
        assert row["weights_bytes"] == (run / "adapter_model.safetensors").stat().st_size
        assert row["hyperparameters"]["learning_rate"] == PAPER_SETTINGS[method]["sft"]["learning_rate"]
        assert manifest["recipe"]["sft"]["learning_rate"] == PAPER_SETTINGS[method]["sft"]["learning_rate"]
        assert manifest["steps"] == 3 and manifest["padding_free"] is False
        assert row["precision"] == manifest["precision"] in ("fp32", "bf16")
        assert f"| {manifest['precision']} |" in (out / "report.md").read_text()
        seen.add(manifest["tokens_seen"])
        assert row["status"].split(":")[0] in ("trained", "did not train")
        assert 0 <= row["score"]["mean"] <= 100 and row["score"]["spread"] >= 0
    assert len(seen) == 1  # the same batches: the same tokens for every method
    assert rows["prompt_tuning"]["hyperparameters"]["num_virtual_tokens"] == 100
    assert rows["prompt_tuning"]["hyperparameters"]["optim"] == "adafactor"

    # every model on exactly the same held-out rows
    keys = set()
    for name in rows:
        evaluated = json.loads((out / "eval" / name / "results.json").read_text())
        keys.add(frozenset((r["task"], r["template"], r["scores"]["n"]) for r in evaluated["records"]))
        if name.startswith("icl-"):
            k = int(name.removeprefix("icl-k"))
            assert evaluated["shots_from"] == "mixture"
            assert all(r["shots"] == r["shots_used"] == k for r in evaluated["records"])
    assert len(keys) == 1 and {t for t, _, _ in next(iter(keys))} == {"super_glue_rte", "super_glue_cb"}

    # in-context learning costs tokens per row; soft tokens cost some too
    cost = {name: row["inference_tokens_per_row"] for name, row in rows.items()}
    assert cost["base"] < cost["icl-k1"] < cost["icl-k2"]
    assert cost["lora"] == cost["ia3"] == cost["base"] < cost["prompt_tuning"]
    assert all(rows[n]["trainable"] == 0 and rows[n]["score"]["mean"] is not None for n in ("base", "icl-k1"))

    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method | status"))
    assert all(f"| {column} |" in header for column in COLUMNS[1:])
    for row in rows.values():
        assert any(line.startswith(f"| {row['label']} |") or line.startswith(f"| **{row['label']}** |")
                   for line in report.splitlines())
    assert "Lester et al., 2021" in report and "| 0.3 | adafactor |" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "recipes" / "lora.yaml").is_file() and (out / "logs" / "lora.log").is_file()

    # started again: nothing trains or evaluates twice
    finished = {m: json.loads((out / "runs" / m / "run.json").read_text())["finished_at"] for m in methods}
    evaluated_at = {n: (out / "eval" / n / "results.json").stat().st_mtime_ns for n in rows}
    capsys.readouterr()
    assert _compare(recipe) == 0
    err = capsys.readouterr().err
    for method in methods:
        assert f"{method}: finished earlier, skipped" in err
        assert json.loads((out / "runs" / method / "run.json").read_text())["finished_at"] == finished[method]
    for name in rows:
        assert f"{name}: evaluated earlier, skipped" in err
        assert (out / "eval" / name / "results.json").stat().st_mtime_ns == evaluated_at[name]
    again = json.loads((out / "results.json").read_text())
    assert [r["score"] for r in again["rows"]] == [r["score"] for r in results["rows"]]

    # a finished run is never reused under other settings
    code = _compare(recipe, "--max-steps", "4")
    assert_one_line_error(code, capsys.readouterr().err, str(out / "runs" / "lora"),
                          "sft.max_steps: 3 there, 4 here")
    # nor in another precision: compared as trained (run.json), not as the recipe asked ("auto")
    trained = json.loads((out / "runs" / "lora" / "run.json").read_text())["precision"]
    other = "fp32" if trained == "bf16" else "bf16"
    code = _compare(recipe, "--set", f"train.precision={other}")
    assert_one_line_error(code, capsys.readouterr().err, str(out / "runs" / "lora"),
                          f"was trained in {trained}, and this comparison trains in {other}",
                          f"--set train.precision={trained}")
    assert _compare(recipe, "--set", f"train.precision={trained}") == 0  # the same as trained: reused
    assert "lora: finished earlier, skipped" in capsys.readouterr().err


@requires_shared_data
@pytest.mark.slow
def test_a_method_that_did_not_train_is_reported_not_dropped(tmp_path, tokenizer, small_build):
    """A NaN loss (a learning rate of 1e30) and a flat one (0: the whole mixture every step, unchanged
    weights) are rows of the table; in-context learning that cannot fit the context is a row too."""
    from transformers import LlamaForCausalLM, set_seed

    set_seed(0)
    model = tmp_path / "tiny-256"  # a 256-token context: 8 exemplars cannot fit
    LlamaForCausalLM(tiny_config(len(tokenizer)).__class__(**{
        **tiny_config(len(tokenizer)).to_dict(), "max_position_embeddings": 256})).save_pretrained(model)
    tokenizer.save_pretrained(model)
    recipe = _recipe(tmp_path, model, small_build, {
        "methods": ["lora", "prompt_tuning"], "eval": {"limit": 1, "templates": 1, "shots": [0, 8]},
        "settings": {"lora": {"sft": {"learning_rate": 1.0e30}},
                     "prompt_tuning": {"sft": {"learning_rate": 0.0}}}})
    assert _compare(recipe) == 0
    out = tmp_path / "cmp"
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["base", "icl-k8", "lora", "prompt_tuning"]
    nan, flat = rows["lora"], rows["prompt_tuning"]
    assert nan["trained"] is False and nan["status"].startswith("did not train: loss nan at step")
    assert nan["score"] is None and not (out / "eval" / "lora").exists()  # NaN weights score nothing
    assert flat["trained"] is False and flat["status"].startswith("did not train: loss flat")
    assert flat["score"]["mean"] is not None  # evaluated all the same
    assert rows["icl-k8"]["status"].startswith("not run: the longest 8-shot sequence is")
    assert "over the model's context of 256" in rows["icl-k8"]["status"] and rows["icl-k8"]["score"] is None
    report = (out / "report.md").read_text()
    assert "| **lora** | did not train: loss nan" in report
    assert "| **prompt_tuning** | did not train: loss flat" in report


# -- the recipe ----------------------------------------------------------------------------------

def test_the_shipped_comparison_checks_with_each_papers_settings(capsys):
    assert _compare(REPO / "train" / "peft-compare.yaml", "--check") == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert "learning_rate 0.3, optim adafactor" in lines["prompt_tuning"]
    assert "learning_rate 0.003, optim adafactor" in lines["ia3"]
    assert "learning_rate 0.0002" in lines["lora"] and "r 4, alpha 32" in lines["lora"]
    assert "learning_rate 0.005" in lines["prefix_tuning"] and "learning_rate 3e-05" in lines["full"]
    assert "150 steps each; evaluated on 30 rows per dataset, all templates; in-context k = 0, 1, 4" in out


def test_settings_override_a_papers_and_bad_methods_are_one_line_errors(capsys, tmp_path):
    from flan_builder.compare.methods import load_comparison

    comparison = load_comparison(REPO / "train" / "peft-compare.yaml",
                                 ["compare.settings.lora.sft.learning_rate=1e-3", "sft.max_steps=7"],
                                 ["lora", "ia3"])
    assert comparison.methods == ["lora", "ia3"]
    assert comparison.recipes["lora"].sft["learning_rate"] == 1e-3
    assert all(r.sft["max_steps"] == 7 and r.train["padding_free"] is False
               for r in comparison.recipes.values())
    assert comparison.recipes["ia3"].output == "runs/peft-compare/runs/ia3"
    code = _compare(REPO / "train" / "peft-compare.yaml", "--methods", "lora,adapterx", "--check")
    assert_one_line_error(code, capsys.readouterr().err, "unknown method(s) adapterx", "prompt_tuning")
    code = _compare(REPO / "train" / "peft-compare.yaml", "--set", "compare.eval.shots=[-1]", "--check")
    assert_one_line_error(code, capsys.readouterr().err, "compare.eval.shots must be whole numbers >= 0")
    from flan_builder.cli import main

    code = main(["train", "peft-compare", "--check"])
    assert_one_line_error(code, capsys.readouterr().err, "peft-compare is a comparison of tuning methods: "
                                                         "run it with flan compare peft-compare")
    # any training recipe compares every method, beside (never inside) the recipe's own run folder
    plain = load_comparison(REPO / "train" / "heldout-nli.yaml")
    assert plain.methods == ["lora", "full", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3"]
    assert plain.base.output == "runs/heldout-nli-compare"
    (tmp_path / "run.json").write_text("{}")
    code = _compare(REPO / "train" / "peft-compare.yaml", "--output", str(tmp_path))
    assert_one_line_error(code, capsys.readouterr().err, f"{tmp_path} exists and is not a comparison")

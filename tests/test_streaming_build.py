"""The streamed build (shards -> Arrow on disk -> mixture order; shards.py, writer.py) writes what
the in-memory build wrote, in any shard, chunk and bucket size, with any --num-proc, and an
interrupted build leaves nothing that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from flan_builder import shards as shards_module
from flan_builder import writer
from flan_builder.build import TRAIN, BuildConfig, build, plan_build
from flan_builder.errors import FlanError
from flan_builder.fewshot import FewShotSettings
from flan_builder.manifest import canonical_json, content_hash
from flan_builder.mixing import MixingConfig
from flan_builder.shards import POSITION, PRIVATE_COLUMNS, render_shard
from tests.helpers import FIXTURE_DATA, FIXTURE_TEMPLATES, REPO, SHARED_DATA, requires_shared_data

# The default nli build's training tasks at commit d31d4e6 (before the streamed build); naming
# them keeps these builds the same when new clusters are added to the shipped templates.
NLI_TRAIN_TASKS = [
    "aeslc", "common_gen", "cos_e", "definite_pronoun_resolution", "dream", "gap", "glue_cola",
    "glue_sst2", "rotten_tomatoes", "scitldr", "super_glue_copa", "super_glue_wsc", "trec", "web_nlg",
    "web_questions", "wmt_cs_en", "wmt_de_en", "wmt_ru_en",
]
# Content hashes the in-memory build of d31d4e6 wrote for these builds, and the digest of the
# template files they were made from (the skip condition: a changed template changes the rows).
PINNED_TEMPLATES = "78019d22fae85055"
PINNED = {
    "default": ({}, "db84a1e4c8094c956ea34ea28cadc8d7dad65810046b1b4b5c3a4bd4cfd0ec1d"),
    "messages": ({"style": "messages"},
                 "b02b8680d22c594b0c08f70d7e0d34e4f24480530eec69126de1dcb2355644dd"),
    "four formats": ({"fewshot": FewShotSettings(formats=("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")),
                      "mixing": MixingConfig(total=4000)},
                     "288c16044a64f8e2e3d3e209d95a99903fb1ab2e13a6d7252a59263d3f2586a9"),
}
# Small enough to cycle through super_glue_copa's 400 rows; four formats exercise few-shot shaping.
SMALL = ["--heldout", "nli", "--tasks", "super_glue_copa,trec", "--total", "8000",
         "--formats", "zs_opt,zs_noopt,fs_opt,fs_noopt", "--max-eval-rows", "40"]


def small_config(out: Path, **kwargs) -> BuildConfig:
    return BuildConfig(heldout="nli", out=out, data_dir=SHARED_DATA, tasks=["super_glue_copa", "trec"],
                       mixing=MixingConfig(total=8000), max_eval_rows=40,
                       fewshot=FewShotSettings(formats=("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")),
                       **kwargs)


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Many shards, chunks and buckets for a small build: every boundary is crossed."""
    monkeypatch.setattr(shards_module, "SHARD_ROWS", 300)
    monkeypatch.setattr(writer, "CHUNK_ROWS", 700)
    monkeypatch.setattr(writer, "CHUNK_BYTES", 150_000)  # long rows end a chunk before 700 rows
    monkeypatch.setattr(writer, "BUCKET_BYTES", 100_000)  # 1,000-row buckets (the floor)


def test_routing_chunks_are_bounded_in_bytes_as_well_as_rows(tmp_path, monkeypatch):
    """A run of long rows (a summarisation task's shards, in plan order) ends a chunk early: the
    routing pass's memory does not depend on how long one task's rows are. Rows keep their order."""
    import pyarrow as pa

    monkeypatch.setattr(writer, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(writer, "CHUNK_BYTES", 200_000)
    path = tmp_path / "rendered.arrow"
    lengths = [10] * 2500 + [2000] * 600 + [10] * 900  # short rows, then long ones, then short
    texts = ["x" * n for n in lengths]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("t", pa.string())])) as out:
        for start in range(0, len(texts), 100):  # 100-row batches, as map writes them (1,000 there)
            out.write_table(pa.table({"t": texts[start:start + 100]}))
    chunks = list(writer._chunks([path]))
    assert [t for c in chunks for t in c["t"].to_pylist()] == texts
    for chunk in chunks:
        assert chunk.num_rows <= 1000 and chunk.nbytes < 200_000 + 100 * 2004  # a bound plus one batch
    assert chunks[0].num_rows == 1000  # short rows: the row bound
    assert min(c.num_rows for c in chunks) <= 200  # long rows: the byte bound, far below 1,000


def _files_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@requires_shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PINNED))
def test_streamed_build_keeps_the_in_memory_builds_content_hash(tmp_path, name):
    kwargs, pinned = PINNED[name]
    manifest = build(BuildConfig(heldout="nli", out=tmp_path / "out", data_dir=SHARED_DATA,
                                 tasks=NLI_TRAIN_TASKS, **kwargs)).manifest
    templates = {t: v["sha256"] for t, v in manifest["templates"].items()}
    digest = hashlib.sha256(canonical_json(templates).encode()).hexdigest()[:16]
    if digest != PINNED_TEMPLATES:
        pytest.skip("the template files of these tasks changed since the hashes were pinned")
    assert manifest["content_hash"]["all"] == pinned
    if name == "default":
        assert manifest["counts"]["train"]["total"] == 45_164


@requires_shared_data
def test_rows_sorted_by_position_are_the_build_whatever_the_shard_chunk_and_bucket_sizes(
        tmp_path, tiny_pieces):
    config = small_config(tmp_path / "out")
    manifest = build(config).manifest
    dataset = load_from_disk(str(config.out))
    assert len(dataset["train"].cache_files) == 1  # save_to_disk's shards, not the work files
    assert not (config.out / ".work").exists()
    # The same plan rendered in memory, one shard per task (as a distributed job could), sorted by
    # position, is the saved split row for row.
    planned = plan_build(small_config(tmp_path / "unused"))
    for split in ("train", "heldout"):
        rows = [row for shard in planned.shards(split, max_rows=10**9) for row in render_shard(shard)]
        rows.sort(key=lambda row: row[POSITION])
        assert [row[POSITION] for row in rows] == list(range(len(rows)))
        for row in rows:
            for column in PRIVATE_COLUMNS:
                row.pop(column)
        assert dataset[split].to_list() == rows
        columns = manifest["content_hash_columns"]
        assert content_hash({k: r[k] for k in columns} for r in rows) == manifest["content_hash"][split]
    # the train split is shuffled: plan order (task by task) is not the output order
    assert dataset["train"]["task"][:50] != sorted(dataset["train"]["task"][:50])
    formats = manifest["formats"]
    assert sum(formats["per_format"].values()) == 8000 and formats["few_shot_rows"] > 0


@requires_shared_data
@pytest.mark.slow
def test_num_proc_2_writes_the_same_files(tmp_path, tiny_pieces):
    one = build(small_config(tmp_path / "one")).manifest
    two = build(small_config(tmp_path / "two", num_proc=2)).manifest
    assert one["content_hash"] == two["content_hash"]
    assert _files_digest(tmp_path / "one") == _files_digest(tmp_path / "two")


@requires_shared_data
@pytest.mark.slow
def test_interrupted_build_leaves_nothing_complete_and_the_rerun_matches(tmp_path):
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "flan_builder.cli", "build", *SMALL, "--data-dir", str(SHARED_DATA),
               "--out", str(out), "--num-proc", "2"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    work: list[Path] = []
    while time.time() < deadline and not work:  # kill it once rendered rows are on disk
        assert proc.poll() is None, "the build finished before it could be interrupted"
        work = [p for p in tmp_path.glob(".ds.tmp-*/.work/*") if p.stat().st_size]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert work, "no rendered rows appeared in time"
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".ds.tmp-") for p in leftovers)
    assert not any((p / "manifest.json").exists() or (p / "dataset_dict.json").exists() for p in leftovers)
    # the next run removes what the killed one left and writes the same rows as an uninterrupted build
    rerun = build(small_config(out)).manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    fresh = build(small_config(tmp_path / "fresh")).manifest
    assert rerun["content_hash"] == fresh["content_hash"]


def test_a_training_row_with_a_heldout_rows_content_fails_the_build(tmp_path):
    """A held-out row copied into another cluster's training data (kept by --contamination report)
    is caught by the exact check over the written rows, which names the first one in output order."""
    templates = tmp_path / "templates"
    (templates / "nli").mkdir(parents=True)
    nli = (FIXTURE_TEMPLATES / "nli" / "toy_nli.yaml").read_text(encoding="utf-8")
    (templates / "nli" / "toy_nli.yaml").write_text(nli, encoding="utf-8")
    cluster = (FIXTURE_TEMPLATES / "nli" / "_cluster.yaml").read_text(encoding="utf-8")
    (templates / "nli" / "_cluster.yaml").write_text(cluster, encoding="utf-8")
    (templates / "qa").mkdir()
    copy = nli.replace("task: toy_nli", "task: toy_copy").replace("cluster: nli", "cluster: qa") \
        .replace("mirror: toy_nli", "mirror: toy_copy").replace("example/toy-nli", "example/toy-copy")
    (templates / "qa" / "toy_copy.yaml").write_text(copy, encoding="utf-8")
    data = tmp_path / "data"
    (data / "toy_nli").mkdir(parents=True)
    (data / "toy_copy").mkdir()
    heldout = (FIXTURE_DATA / "toy_nli" / "validation.jsonl").read_text(encoding="utf-8")
    train = (FIXTURE_DATA / "toy_nli" / "train.jsonl").read_text(encoding="utf-8")
    (data / "toy_nli" / "validation.jsonl").write_text(heldout, encoding="utf-8")
    (data / "toy_nli" / "train.jsonl").write_text(train, encoding="utf-8")
    (data / "toy_copy" / "train.jsonl").write_text(train + heldout.splitlines(keepends=True)[0],
                                                    encoding="utf-8")
    config = BuildConfig(heldout="nli", out=tmp_path / "out", data_dir=data, templates_dir=templates,
                         contamination="report")
    with pytest.raises(FlanError, match=r"^1 training rows repeat a held-out row .*task toy_copy, "
                                        rf"train row {len(train.splitlines())}\)"):
        build(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "templates"]


def test_plan_order_positions_are_the_seeded_shuffle_of_the_in_memory_build(tmp_path):
    config = BuildConfig(heldout="nli", out=tmp_path / "out", data_dir=FIXTURE_DATA,
                         templates_dir=FIXTURE_TEMPLATES, mixing=MixingConfig(all_templates=True))
    planned = plan_build(config)
    shards = planned.shards(TRAIN, max_rows=7)
    plan_order = [row for shard in shards for row in render_shard(shard)]
    # what the in-memory build did: every task's rows in plan order, then random.shuffle
    from flan_builder.mixing import task_rng

    shuffled = list(plan_order)
    task_rng(config.seed, "*", "shuffle").shuffle(shuffled)
    assert [row[POSITION] for row in shuffled] == list(range(len(plan_order)))
    assert json.dumps([row["task"] for row in shuffled]) != json.dumps([row["task"] for row in plan_order])


def test_the_builds_shards_read_their_positions_from_a_file_and_render_the_same_rows(tmp_path):
    config = BuildConfig(heldout="nli", out=tmp_path / "out", data_dir=FIXTURE_DATA,
                         templates_dir=FIXTURE_TEMPLATES, mixing=MixingConfig(all_templates=True))
    planned = plan_build(config)
    for split in planned.jobs:
        in_memory = planned.shards(split, max_rows=7)
        stored = planned.shards(split, max_rows=7, folder=tmp_path)
        assert len(stored) == len(in_memory) > 1
        assert ([row for shard in stored for row in render_shard(shard)]
                == [row for shard in in_memory for row in render_shard(shard)])
        # what the build pickles to its workers: a shard's positions are a path and a few numbers,
        # however many rows it has (an array would add 8 bytes a row)
        whole = planned.shards(split, max_rows=10**9, folder=tmp_path)
        assert max(len(shard) for shard in whole) >= 10
        for shard in whole:
            assert len(pickle.dumps(shard.positions)) - len(pickle.dumps(shard.positions[:1])) <= 8

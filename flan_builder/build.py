"""``flan build``: specs + rows -> rendered, mixed, held-out-split DatasetDict + manifest.

Phases: plan the split (held-out rules) -> load each task's rows -> decide counts
(caps and mixing) -> render -> write train/heldout atomically with a manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from flan_builder import writer
from flan_builder.atomic import atomic_directory, check_output_free, write_json_atomic
from flan_builder.contamination import DEFAULT_MODE, MODES, ContaminationCheck
from flan_builder.errors import FlanError
from flan_builder.fewshot import (
    FewShotSettings,
    FormatTally,
    ResolvedSettings,
    check_tokenizer,
    hash_columns,
    plan_task,
)
from flan_builder.heldout import SplitPlan, plan_split
from flan_builder.manifest import (
    MANIFEST_NAME,
    command_line,
    content_hash,
    package_versions,
    row_hash,
)
from flan_builder.mixing import (
    MixingConfig,
    draw_rows,
    draw_templates,
    mixture_counts,
    pool_indices,
    shuffled_positions,
    task_rng,
)
from flan_builder.progress import progress, quiet_datasets_unless_terminal
from flan_builder.prompt_styles import DEFAULT_PROMPT_STYLE, check_style, styled_spec
from flan_builder.prompt_styles import describe as describe_style
from flan_builder.shards import Shard, StoredPositions, features, placed
from flan_builder.sources import Rows, load_split
from flan_builder.specs import Registry, TaskSpec, load_registry
from flan_builder.templating import DEFAULT_SEPARATOR, TaskRenderer

EXPORT_FORMATS = ("parquet", "jsonl")
OUTPUT_STYLES = ("prompt_completion", "messages")
TRAIN, HELDOUT = "train", "heldout"


@dataclass
class BuildConfig:
    """Everything that decides a built dataset (recorded in its manifest)."""

    heldout: str | None
    out: Path
    data_dir: Path | None = None
    seed: int = 0
    mixing: MixingConfig = field(default_factory=MixingConfig)
    with_options: bool = True
    style: str = "prompt_completion"
    export_formats: tuple[str, ...] = ()
    separator: str = DEFAULT_SEPARATOR
    tasks: list[str] | None = None
    train_clusters: list[str] | None = None
    num_train_clusters: int | None = None  # the first N clusters, most training tasks first (FLAN 4.1)
    with_clusters: list[str] | None = None  # opt-in clusters to train on too (tabular)
    max_eval_rows: int | None = None
    num_proc: int = 1
    eval_only: bool = False  # only the held-out split: evaluate tasks without training on any
    overwrite: bool = False
    templates_dir: Path | list[Path] | None = None  # a folder, or a search path
    contamination: str = DEFAULT_MODE  # drop | report | fail: held-out text found in training rows
    fewshot: FewShotSettings = field(default_factory=FewShotSettings)  # --formats, --shots (fewshot.py)
    prompt_style: str = DEFAULT_PROMPT_STYLE  # training rows: instructions | no_template | dataset_name

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("out", "data_dir"):
            data[key] = str(data[key]) if data[key] is not None else None
        folders = self.templates_dir
        data["templates_dir"] = ([str(f) for f in folders] if isinstance(folders, (list, tuple))
                                 else str(folders) if folders is not None else None)
        data["export_formats"] = list(self.export_formats)
        return data


@dataclass
class BuildResult:
    out: Path
    manifest: dict[str, Any]


def _template_choice(spec: TaskSpec, mixing: MixingConfig) -> list[int]:
    count = len(spec.templates)
    if mixing.max_templates is not None:
        count = min(count, mixing.max_templates)
    return list(range(count))


def _pools(plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig) -> dict[str, list[int]]:
    """The distinct rows each training task may draw from (FLAN's per-dataset cap)."""
    return {
        spec.name: pool_indices(len(loaded[spec.name]), config.mixing.max_per_dataset,
                                task_rng(config.seed, spec.name, "pool"))
        for spec in plan.train_tasks
    }


def _clean_train_jobs(
    plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig, check: ContaminationCheck
) -> tuple[list[Shard], dict[str, dict[str, int]]]:
    """Draw the mixture and check the drawn rows against the held-out ones.

    ``drop``: overlapping rows leave their pool and the mixture is drawn again (only rows not
    seen before are checked), until every drawn row is clean.
    """
    pools = _pools(plan, loaded, config)
    while True:
        jobs, sizes = _train_jobs(plan, loaded, config, pools)
        found = {job.spec.name: _scan(check, job) for job in jobs}
        if config.contamination == "fail" and check.found:
            raise FlanError(check.fail_message())
        if config.contamination != "drop" or not any(found.values()):
            return jobs, sizes
        for task, rows in found.items():
            pools[task] = [i for i in pools[task] if i not in rows]


def _scan(check: ContaminationCheck, job: Shard) -> set[int]:
    """``check.scan`` of the rows a training job shows, its drawn rows read a chunk at a time (a
    task's whole split parsed at once would grow the build's memory with the data)."""
    spec = job.spec
    found = check.scan_rows(spec.name, spec.fields, job.indices.tolist(), job.source.take)
    if job.fewshot is not None:  # exemplar rows: already parsed by the few-shot plan
        found |= check.scan(spec.name, spec.fields, *job.fewshot.source_rows())
    return found


def _train_jobs(
    plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig, pools: dict[str, list[int]]
) -> tuple[list[Shard], dict[str, dict[str, int]]]:
    """Each training task's whole plan, as one shard (cut to size when written)."""
    mixing = config.mixing
    fewshot = config.fewshot.resolved(config.with_options)
    counts = mixture_counts({t: len(p) for t, p in pools.items()}, mixing.rate_cap, mixing.total)
    jobs, sizes = [], {}
    for spec in plan.train_tasks:
        rng = task_rng(config.seed, spec.name, "draw")
        drawn = draw_rows(pools[spec.name], counts[spec.name], rng)
        allowed = _template_choice(spec, mixing)
        # Plans are arrays, not lists of lists: a row of the plan costs bytes, not a Python object.
        per_row = None if mixing.all_templates else np.array(
            [allowed[i] for i in draw_templates(len(drawn), len(allowed), rng)], dtype=np.int32)
        sizes[spec.name] = {
            "rows_available": len(loaded[spec.name]),
            "pool": len(pools[spec.name]),
            "mixing_count": counts[spec.name],
        }
        job = Shard(spec, loaded[spec.name], np.array(drawn, dtype=np.int64), tuple(allowed),
                    config.with_options, config.separator, config.style, row_templates=per_row)
        if not fewshot.plain:
            job.fewshot = plan_task(spec, fewshot, config.seed, drawn, job.row_template_lists(),
                                    pools[spec.name], allowed, loaded[spec.name].take)
        jobs.append(job)
    return jobs, sizes


def _heldout_jobs(
    plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig
) -> tuple[list[Shard], dict[str, dict[str, int]]]:
    jobs, sizes = [], {}
    for spec in plan.heldout_tasks:
        rows = loaded[spec.name]
        limit = config.max_eval_rows or len(rows)
        indices = pool_indices(len(rows), limit, task_rng(config.seed, spec.name, "eval"))
        templates = [i for i, t in enumerate(spec.templates) if not t.inverted]
        sizes[spec.name] = {"rows_available": len(rows), "rows_used": len(indices),
                            "templates": len(templates)}
        jobs.append(Shard(spec, rows, np.array(indices, dtype=np.int64), tuple(templates),
                          config.with_options, config.separator, config.style))
    return jobs, sizes


def _load_all(specs: list[TaskSpec], role: str, data_dir: Path | None) -> dict[str, Rows]:
    loaded = {}
    with progress(specs, desc=f"loading {role} splits", unit="task") as bar:
        for spec in bar:
            loaded[spec.name] = load_split(spec, role, data_dir)
    return loaded


def _check_prompt_style(config: BuildConfig, plain: bool) -> None:
    check_style(config.prompt_style)
    if config.prompt_style == DEFAULT_PROMPT_STYLE:
        return
    what = f"--prompt-style {config.prompt_style}"
    if not plain:
        raise FlanError(f"{what} builds zero-shot rows in one format; drop --formats (use --no-options "
                        "for rows without the OPTIONS suffix)")
    if config.mixing.all_templates or config.mixing.max_templates is not None:
        raise FlanError(f"{what} renders each training row once, without templates; drop "
                        "--all-templates / --max-templates")


@dataclass
class BuildPlan:
    """What a build writes, decided before any row is rendered (``plan_build``)."""

    config: BuildConfig
    registry: Registry
    split_plan: SplitPlan
    renderers: dict[str, TaskRenderer]  # every task's compiled templates, by task name
    train_rows: dict[str, Rows]
    heldout_rows: dict[str, Rows]
    train_sizes: dict[str, dict[str, int]]
    heldout_sizes: dict[str, dict[str, int]]
    contamination: ContaminationCheck
    originals: dict[str, TaskSpec]  # training tasks before --prompt-style
    fewshot: ResolvedSettings
    jobs: dict[str, list[Shard]]  # each output split's tasks in plan order, one whole shard each
    hashed: list[str]  # the content hash's columns
    heldout_hashes: set[str]  # source rows no training row may show

    def rows(self, split: str) -> int:
        return sum(len(job) for job in self.jobs[split])

    def shards(self, split: str, max_rows: int | None = None, folder: Path | None = None) -> list[Shard]:
        """``split``'s shards of at most ``max_rows`` (default ``SHARD_ROWS``) rendered rows, each
        with its rows' places in the split: what ``render_shard`` takes, here or in a distributed job.
        ``folder``: the places go to a file there, which each shard reads when it is rendered
        (``StoredPositions``), so that no process holds or sends them all (the build's way)."""
        # The training rows' order is a seeded shuffle of plan order, applied by position.
        count = self.rows(split)
        positions: np.ndarray | StoredPositions | None = None
        if split == TRAIN:
            positions = shuffled_positions(self.config.seed, count)
            if folder is not None:
                positions = StoredPositions.write(positions, folder / f"{split}-positions.bin")
        elif folder is not None:
            positions = StoredPositions(None, 0, count)
        return placed([dataclasses.replace(job, hashed=tuple(self.hashed)) for job in self.jobs[split]],
                      positions, max_rows)


def plan_build(config: BuildConfig, registry: Registry | None = None) -> BuildPlan:
    """Check ``config``, load the sources and draw the mixture: everything but rendering and writing."""
    if config.style not in OUTPUT_STYLES:
        raise FlanError(f"--as must be one of {', '.join(OUTPUT_STYLES)}")
    if config.contamination not in MODES:
        raise FlanError(f"--contamination must be one of {', '.join(MODES)} (got {config.contamination!r})")
    for fmt in config.export_formats:
        if fmt not in EXPORT_FORMATS:
            raise FlanError(f"--format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    fewshot = config.fewshot.resolved(config.with_options)
    check_tokenizer(fewshot.tokenizer if fewshot.few_shot else None)
    _check_prompt_style(config, fewshot.plain)
    registry = registry or load_registry(config.templates_dir)
    plan = plan_split(registry, config.heldout, train_clusters=config.train_clusters,
                      tasks=config.tasks, with_clusters=config.with_clusters,
                      eval_only=config.eval_only, num_train_clusters=config.num_train_clusters)
    # FLAN's no-template / dataset-name ablation changes the training rows only (prompt_styles.py).
    originals = {spec.name: spec for spec in plan.train_tasks}
    plan.train_tasks = [styled_spec(spec, config.prompt_style) for spec in plan.train_tasks]
    # Compile every template before loading any data: a syntax error should fail in seconds.
    renderers = {
        spec.name: TaskRenderer(spec, with_options=config.with_options, separator=config.separator)
        for spec in plan.train_tasks + plan.heldout_tasks
    }

    train_rows = _load_all(plan.train_tasks, "train", config.data_dir)
    heldout_rows = _load_all(plan.heldout_tasks, "eval", config.data_dir)
    heldout_jobs, heldout_sizes = _heldout_jobs(plan, heldout_rows, config)
    heldout_rows_shown = [(j.spec, *j.prompt_rows()) for j in heldout_jobs]
    contamination = ContaminationCheck([(spec.name, spec.fields, indices, rows)
                                        for spec, indices, rows in heldout_rows_shown], config.contamination)
    train_jobs, train_sizes = _clean_train_jobs(plan, train_rows, config, contamination)
    if not any(len(job) for job in train_jobs + heldout_jobs):
        raise FlanError("the build produced no rows; check --tasks / --train-clusters / --total")
    # A training row (or few-shot exemplar) with a held-out row's content fails the build.
    heldout_hashes = {row_hash({k: row[k] for k in spec.fields})
                      for spec, _, rows in heldout_rows_shown for row in rows}
    del heldout_rows_shown

    splits = {TRAIN: train_jobs}
    if plan.heldout is not None:
        splits[HELDOUT] = heldout_jobs
    hashed = hash_columns(list(features(config.style)), fewshot)
    return BuildPlan(config, registry, plan, renderers, train_rows, heldout_rows, train_sizes,
                     heldout_sizes, contamination, originals, fewshot, splits, hashed, heldout_hashes)


def build(config: BuildConfig, registry: Registry | None = None) -> BuildResult:
    """Build the dataset described by ``config`` and write it atomically to ``config.out``."""
    started = time.perf_counter()
    check_output_free(Path(config.out), config.overwrite)  # before any work
    planned = plan_build(config, registry)
    registry, plan, hashed = planned.registry, planned.split_plan, planned.hashed
    renderers = planned.renderers
    train_rows, heldout_rows = planned.train_rows, planned.heldout_rows
    train_sizes, heldout_sizes = planned.train_sizes, planned.heldout_sizes
    contamination, originals, fewshot = planned.contamination, planned.originals, planned.fewshot
    manifest: dict[str, Any] = {
        "kind": "flan-builder dataset",
        "format_version": 1,
        "command": command_line(),
        "config": config.to_json(),
        "seed": config.seed,
        "heldout_cluster": plan.heldout,
        "style": config.style,
        "separator": config.separator,
        "with_options": config.with_options,
        "versions": package_versions(),
        "split_plan": plan.to_json(),
        "sources": {
            name: {
                "hub_id": registry.tasks[name].source.hub_id,
                "config": registry.tasks[name].source.config,
                "split": rows.split,
                "origin": rows.origin,
                "license": registry.tasks[name].license,
                **(train_sizes.get(name) or heldout_sizes.get(name) or {}),
            }
            for name, rows in {**train_rows, **heldout_rows}.items()
        },
        "templates": {
            spec.name: {"count": len(spec.templates),
                        "inverted": sum(t.inverted for t in spec.templates),
                        "file": registry.relative_path(spec),
                        "sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest()}
            for spec in (renderer.spec for renderer in renderers.values())
        },
        # how `flan eval` scores each held-out task (from the spec and its cluster's _cluster.yaml),
        # so a built dataset carries it wherever it travels
        "evaluation": {spec.name: registry.evaluation(spec).to_json() for spec in plan.heldout_tasks},
        "counts": None,  # this and the other Nones: set once the rows are written
        "contamination": contamination.to_json(plan.shares_source),
        "formats": None,  # zero-/few-shot, with/without OPTIONS: what was drawn and made (train)
        "prompt_style": describe_style(plan.train_tasks, originals, config.prompt_style),
        "content_hash": None,
        "content_hash_columns": hashed,
    }
    tally = FormatTally()
    with atomic_directory(Path(config.out), overwrite=config.overwrite) as tmp:
        written = _write(planned, tmp, tally)
        hashes = {name: split.content_hash for name, split in written.items()}
        manifest["counts"] = {name: split.counts for name, split in written.items()}
        plans = {j.spec.name: j.fewshot for j in planned.jobs[TRAIN] if j.fewshot}
        manifest["formats"] = tally.summary(fewshot, plans)
        manifest["content_hash"] = {**hashes, "all": content_hash([hashes])}
        manifest["built_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest["wall_time_s"] = round(time.perf_counter() - started, 2)
        # The manifest is written last: its presence marks a complete output.
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return BuildResult(Path(config.out), manifest)


def _write(planned: BuildPlan, tmp: Path, tally: FormatTally) -> dict[str, writer.WrittenSplit]:
    """Render, order and save each split under ``tmp`` in bounded memory (writer.py)."""
    config = planned.config
    quiet_datasets_unless_terminal()
    work = tmp / ".work"  # inside the atomic folder: an interrupted build leaves nothing outside it
    work.mkdir()
    written = {}
    for name in planned.jobs:
        files = writer.render(name, planned.shards(name, folder=work), work, config.style, config.num_proc,
                              planned.renderers)
        train = name == TRAIN
        written[name] = writer.order(
            name, files, planned.rows(name), work, config.style, tally=tally if train else None,
            leaks=writer.LeakCheck(planned.heldout_hashes) if train else None,
            export_dir=tmp / "data" if config.export_formats else None, export_formats=config.export_formats)
    writer.save(tmp, written, config.style)
    shutil.rmtree(work)
    return written

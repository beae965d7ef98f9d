"""``flan build``: specs + rows -> rendered, mixed, held-out-split DatasetDict + manifest.

Phases: plan the split (held-out rules) -> load each task's rows -> decide counts
(caps and mixing) -> render -> write train/heldout atomically with a manifest.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flan_builder.atomic import atomic_directory, check_output_free, write_json_atomic
from flan_builder.contamination import DEFAULT_MODE, MODES, ContaminationCheck
from flan_builder.errors import FlanError
from flan_builder.fewshot import (
    FewShotSettings,
    TaskPlan,
    check_tokenizer,
    hash_columns,
    plan_task,
    shape_records,
    summarize,
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
    task_rng,
)
from flan_builder.processes import exit_with_parent
from flan_builder.progress import progress, quiet_datasets_unless_terminal
from flan_builder.prompt_styles import DEFAULT_PROMPT_STYLE, check_style, styled_spec
from flan_builder.prompt_styles import describe as describe_style
from flan_builder.sources import Rows, load_split
from flan_builder.specs import Registry, TaskSpec, load_registry
from flan_builder.templating import DEFAULT_SEPARATOR, RenderedExample, TaskRenderer

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


def _record(
    spec: TaskSpec, example: RenderedExample, source_split: str, index: int, source_hash: str,
    style: str, template_index: int, fmt: str,
) -> dict[str, Any]:
    if style == "messages":
        prompt: Any = [{"role": "user", "content": example.prompt}]
        completion: Any = [{"role": "assistant", "content": example.target}]
    else:
        prompt, completion = example.prompt, example.completion
    return {
        "prompt": prompt,
        "completion": completion,
        "input": example.input,
        "target": example.target,
        "task": spec.name,
        "cluster": spec.cluster,
        "template_id": example.template_id,
        "inverted": example.inverted,
        "options": example.options,
        "answer_index": example.answer_index,
        "references": example.references,
        "source_split": source_split,
        "source_index": index,
        "source_hash": source_hash,
        "format": fmt,  # zs_opt | zs_noopt | fs_opt | fs_noopt (fewshot.py)
        "template_index": template_index,
        "exemplar_indices": [],  # few-shot rows: the exemplars' rows in the same source split
        "exemplar_hashes": [],
    }


def _features(style: str) -> Any:
    from datasets import Features, List, Value

    text = Value("string")
    if style == "messages":
        turn = {"role": text, "content": text}
        prompt: Any = List(turn)
        completion: Any = List(turn)
    else:
        prompt = completion = text
    return Features({
        "prompt": prompt,
        "completion": completion,
        "input": text,
        "target": text,
        "task": text,
        "cluster": text,
        "template_id": text,
        "inverted": Value("bool"),
        "options": List(text),
        "answer_index": Value("int32"),
        "references": List(text),
        "source_split": text,
        "source_index": Value("int64"),
        "source_hash": text,
        "format": text,
        "template_index": Value("int32"),
        "exemplar_indices": List(Value("int64")),
        "exemplar_hashes": List(text),
    })


@dataclass
class _TaskJob:
    """One task's rendering work, small enough to send to a worker process."""

    spec: TaskSpec
    split: str
    rows: list[dict[str, Any]]
    indices: list[int]  # source row index of each entry of ``rows``
    templates: list[list[int]]  # template indices to render for each row
    with_options: bool
    separator: str
    style: str
    fewshot: TaskPlan | None = None  # formats and exemplars of a mixed-format build

    def prompt_rows(self) -> tuple[list[int], list[dict[str, Any]]]:
        """Every source row the job's prompts show: the drawn rows and their exemplars."""
        if self.fewshot is None:
            return self.indices, self.rows
        indices, rows = self.fewshot.source_rows()
        return self.indices + indices, self.rows + rows


def _render_job(job: _TaskJob, renderer: TaskRenderer | None = None) -> list[dict[str, Any]]:
    if renderer is None:  # in a worker process: compile there (compiled templates don't pickle)
        renderer = TaskRenderer(job.spec, with_options=job.with_options, separator=job.separator)
    fmt = "zs_opt" if job.with_options else "zs_noopt"
    records = []
    for row, index, template_indices in zip(job.rows, job.indices, job.templates, strict=True):
        source_hash = row_hash({k: row[k] for k in job.spec.fields})
        if len(template_indices) == 1:
            examples = [renderer.render(row, template_indices[0], split=job.split, row_index=index)]
        else:
            examples = renderer.render_all(row, template_indices, split=job.split, row_index=index)
        for example, template_index in zip(examples, template_indices, strict=True):
            records.append(_record(job.spec, example, job.split, index, source_hash, job.style,
                                   template_index, fmt))
    if job.fewshot is not None:
        records = shape_records(records, job.fewshot, renderer, job.spec, job.separator, job.style)
    return records


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
) -> tuple[list[_TaskJob], dict[str, dict[str, int]]]:
    """Draw the mixture and check the drawn rows against the held-out ones.

    ``drop``: overlapping rows leave their pool and the mixture is drawn again (only rows not
    seen before are checked), until every drawn row is clean.
    """
    pools = _pools(plan, loaded, config)
    while True:
        jobs, sizes = _train_jobs(plan, loaded, config, pools)
        found = {job.spec.name: check.scan(job.spec.name, job.spec.fields, *job.prompt_rows())
                 for job in jobs}
        if config.contamination == "fail" and check.found:
            raise FlanError(check.fail_message())
        if config.contamination != "drop" or not any(found.values()):
            return jobs, sizes
        for task, rows in found.items():
            pools[task] = [i for i in pools[task] if i not in rows]


def _train_jobs(
    plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig, pools: dict[str, list[int]]
) -> tuple[list[_TaskJob], dict[str, dict[str, int]]]:
    mixing = config.mixing
    fewshot = config.fewshot.resolved(config.with_options)
    counts = mixture_counts({t: len(p) for t, p in pools.items()}, mixing.rate_cap, mixing.total)
    jobs, sizes = [], {}
    for spec in plan.train_tasks:
        rng = task_rng(config.seed, spec.name, "draw")
        drawn = draw_rows(pools[spec.name], counts[spec.name], rng)
        allowed = _template_choice(spec, mixing)
        if mixing.all_templates:
            templates = [allowed] * len(drawn)
        else:
            templates = [[allowed[i]] for i in draw_templates(len(drawn), len(allowed), rng)]
        sizes[spec.name] = {
            "rows_available": len(loaded[spec.name]),
            "pool": len(pools[spec.name]),
            "mixing_count": counts[spec.name],
        }
        # Rows are fetched once each, in the drawn order, even when drawn several times.
        rows = loaded[spec.name].take(drawn)
        plan = None if fewshot.plain else plan_task(spec, fewshot, config.seed, drawn, templates,
                                                    pools[spec.name], allowed, loaded[spec.name].take)
        jobs.append(_TaskJob(spec, loaded[spec.name].split, rows, drawn, templates,
                             config.with_options, config.separator, config.style, plan))
    return jobs, sizes


def _heldout_jobs(
    plan: SplitPlan, loaded: dict[str, Rows], config: BuildConfig
) -> tuple[list[_TaskJob], dict[str, dict[str, int]]]:
    jobs, sizes = [], {}
    for spec in plan.heldout_tasks:
        rows = loaded[spec.name]
        limit = config.max_eval_rows or len(rows)
        indices = pool_indices(len(rows), limit, task_rng(config.seed, spec.name, "eval"))
        templates = [i for i, t in enumerate(spec.templates) if not t.inverted]
        sizes[spec.name] = {"rows_available": len(rows), "rows_used": len(indices),
                            "templates": len(templates)}
        jobs.append(_TaskJob(spec, rows.split, rows.take(indices), indices,
                             [templates] * len(indices), config.with_options, config.separator,
                             config.style))
    return jobs, sizes


def _run_jobs(
    jobs: list[_TaskJob], num_proc: int, desc: str, renderers: dict[str, TaskRenderer]
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    with progress(total=len(jobs), desc=desc, unit="task") as bar:
        if num_proc > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=num_proc, initializer=exit_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                for job, records in zip(jobs, pool.map(_render_job, jobs), strict=True):
                    results[job.spec.name] = records
                    bar.update()
        else:
            for job in jobs:
                bar.set_postfix_str(job.spec.name)
                results[job.spec.name] = _render_job(job, renderers[job.spec.name])
                bar.update()
    return results


def _counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    per_template: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        per_template[record["task"]][record["template_id"]] += 1
    return {
        "total": len(records),
        "per_cluster": dict(sorted(Counter(r["cluster"] for r in records).items())),
        "per_task": dict(sorted(Counter(r["task"] for r in records).items())),
        "per_template": {t: dict(sorted(c.items())) for t, c in sorted(per_template.items())},
        "inverted": sum(1 for r in records if r["inverted"]),
    }


def _load_all(specs: list[TaskSpec], role: str, data_dir: Path | None) -> dict[str, Rows]:
    loaded = {}
    with progress(specs, desc=f"loading {role} splits", unit="task") as bar:
        for spec in bar:
            loaded[spec.name] = load_split(spec, role, data_dir)
    return loaded


def _check_no_leak(train: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> None:
    heldout_hashes = {r["source_hash"] for r in heldout}
    leaked = [r for r in train if r["source_hash"] in heldout_hashes
              or not heldout_hashes.isdisjoint(r["exemplar_hashes"])]
    if leaked:
        first = leaked[0]
        raise FlanError(f"{len(leaked)} training rows repeat a held-out row in the row or its few-shot "
                        f"exemplars (first: task "
                        f"{first['task']}, {first['source_split']} row {first['source_index']}); "
                        "remove the duplicate from the training data")


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


def build(config: BuildConfig, registry: Registry | None = None) -> BuildResult:
    """Build the dataset described by ``config`` and write it atomically to ``config.out``."""
    started = time.perf_counter()
    if config.style not in OUTPUT_STYLES:
        raise FlanError(f"--as must be one of {', '.join(OUTPUT_STYLES)}")
    if config.contamination not in MODES:
        raise FlanError(f"--contamination must be one of {', '.join(MODES)} (got {config.contamination!r})")
    for fmt in config.export_formats:
        if fmt not in EXPORT_FORMATS:
            raise FlanError(f"--format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    check_output_free(Path(config.out), config.overwrite)
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
    contamination = ContaminationCheck([(j.spec.name, j.spec.fields, j.indices, j.rows)
                                        for j in heldout_jobs], config.contamination)
    train_jobs, train_sizes = _clean_train_jobs(plan, train_rows, config, contamination)
    rendered_train = _run_jobs(train_jobs, config.num_proc, "rendering train", renderers)
    rendered_heldout = _run_jobs(heldout_jobs, config.num_proc, "rendering heldout", renderers)

    train = [r for job in train_jobs for r in rendered_train[job.spec.name]]
    formats = summarize(fewshot, {j.spec.name: j.fewshot for j in train_jobs if j.fewshot}, train)
    task_rng(config.seed, "*", "shuffle").shuffle(train)
    heldout = [r for job in heldout_jobs for r in rendered_heldout[job.spec.name]]
    if not train and not heldout:
        raise FlanError("the build produced no rows; check --tasks / --train-clusters / --total")
    _check_no_leak(train, heldout)

    splits = {TRAIN: train}
    if plan.heldout is not None:
        splits[HELDOUT] = heldout
    hashed = hash_columns(list(_features(config.style)), fewshot)
    hashes = {name: content_hash({k: r[k] for k in hashed} for r in rows) for name, rows in splits.items()}
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
        "counts": {name: _counts(rows) for name, rows in splits.items()},
        "contamination": contamination.to_json(plan.shares_source),
        "formats": formats,  # zero-/few-shot, with/without OPTIONS: what was drawn and made (train)
        "prompt_style": describe_style(plan.train_tasks, originals, config.prompt_style),
        "content_hash": {**hashes, "all": content_hash([hashes])},
        "content_hash_columns": hashed,
    }
    _write(config, splits, manifest, started)
    return BuildResult(Path(config.out), manifest)


def _write(
    config: BuildConfig, splits: dict[str, list[dict[str, Any]]], manifest: dict[str, Any],
    started: float,
) -> None:
    import pyarrow as pa
    from datasets import Dataset, DatasetDict, DatasetInfo
    from datasets.table import InMemoryTable

    quiet_datasets_unless_terminal()
    features = _features(config.style)
    with atomic_directory(Path(config.out), overwrite=config.overwrite) as tmp:
        # Rows already have the schema's types, so build Arrow tables directly:
        # Dataset.from_list would re-encode every value through Features (most of the write time).
        dataset = DatasetDict({
            name: Dataset(
                InMemoryTable(pa.Table.from_pylist(rows, schema=features.arrow_schema)),
                info=DatasetInfo(features=features),
            )
            for name, rows in splits.items()
        })
        # An empty split (an evaluation-only build's train) must still be one shard: with none,
        # datasets.load_from_disk fails on it (IndexError).
        dataset.save_to_disk(str(tmp), num_shards={name: 1 for name, rows in splits.items() if not rows})
        for fmt in config.export_formats:
            data_dir = tmp / "data"
            data_dir.mkdir(exist_ok=True)
            for name, split in dataset.items():
                target = data_dir / f"{name}.{fmt}"
                if fmt == "parquet":
                    split.to_parquet(str(target))
                else:
                    split.to_json(str(target), lines=True, force_ascii=False)
        manifest["built_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest["wall_time_s"] = round(time.perf_counter() - started, 2)
        # The manifest is written last: its presence marks a complete output.
        write_json_atomic(tmp / MANIFEST_NAME, manifest)

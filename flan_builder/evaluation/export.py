"""``flan export lm-eval``: the held-out tasks as lm-evaluation-harness tasks, scored as ``flan eval`` does.

One lm-eval task per (dataset, template), a group per dataset (the mean over its templates, FLAN's
dataset score) and a group per cluster, like lm-eval's own ``tasks/benchmarks/flan``. The prompts
are rendered here, by the same sandboxed renderer, rows and OPTIONS switch that ``flan build`` uses,
and written as JSONL (``prompt``, ``choices``, ``gold`` / ``references``); each YAML reads its file
with ``dataset_path: json`` and names the fields, so lm-eval copies each prompt without templating
it. Translating our templates into lm-eval's Jinja would need our globals, options and answer
expressions and the OPTIONS suffix re-implemented there, and would drift; a ``!function`` that
imports our renderer would tie every multiple-choice task to this package. Generation tasks are the
exception: their metrics are flan eval's own modules (see ``lm_eval_hooks``), so they need
flan-builder installed where lm-eval runs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flan_builder.errors import FlanError
from flan_builder.evaluation.metrics import lower_is_better
from flan_builder.evaluation.metrics import metric as metric_facts
from flan_builder.specs import Registry, TaskSpec
from flan_builder.templating import DEFAULT_SEPARATOR

PREFIX = "flan"
NO_OPTIONS = "_no_options"
SPLIT = "test"  # the one split each exported file holds: the task's eval rows

EPILOG = """examples:
  flan export lm-eval --out lm-eval-tasks --cluster nli --data-dir ../shared/data
  flan export lm-eval --out lm-eval-tasks --tasks super_glue_rte,glue_qnli --separator " " --options both
  flan export lm-eval --out lm-eval-tasks --cluster nli --max-eval-rows 100 --seed 0   # a build's rows
  lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M \\
      --include_path lm-eval-tasks --tasks flan_nli                   # then run them in lm-eval
"""


@dataclass
class ExportConfig:
    """What to export and how it is scored (recorded in the export's manifest.json)."""

    out: Path
    data_dir: Path | None = None
    tasks: list[str] | None = None
    clusters: list[str] | None = None
    options: tuple[bool, ...] = (True,)
    separator: str = DEFAULT_SEPARATOR
    templates: int | None = None  # first K templates per dataset (flan eval --templates)
    max_eval_rows: int | None = None  # flan build's seeded sample of held-out rows
    seed: int = 0
    templates_dir: Path | list[Path] | None = None  # a spec folder, or a search path (user's first)
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "data_dir": None if self.data_dir is None else str(self.data_dir),
                "tasks": self.tasks, "clusters": self.clusters,
                "options": ["with" if o else "without" for o in self.options],
                "separator": self.separator, "templates": self.templates,
                "max_eval_rows": self.max_eval_rows, "seed": self.seed,
                "templates_dir": None if self.templates_dir is None else
                [str(p) for p in ([self.templates_dir] if isinstance(self.templates_dir, Path)
                                  else self.templates_dir)]}


class _Function(str):
    """A YAML ``!function module.name`` value: lm-eval resolves it beside the YAML file."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _yaml(data: dict[str, Any], header: str) -> str:
    return f"# {header}\n" + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10**6)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def _chosen_specs(registry: Registry, config: ExportConfig) -> list[TaskSpec]:
    """--tasks and --cluster together (their union), else every task that is not opt-in."""
    if not config.tasks and not config.clusters:
        return [s for s in registry.tasks.values() if not registry.is_opt_in(s)]
    chosen: dict[str, TaskSpec] = {}
    for cluster in config.clusters or []:
        registry.check_cluster(cluster)
        chosen.update((s.name, s) for s in registry.in_cluster(cluster))
    for name in config.tasks or []:
        chosen[name] = registry.task(name)
    return list(chosen.values())


def _metric_list(keys: list[str], hooks: bool) -> list[dict[str, Any]]:
    """lm-eval's metric_list; with ``hooks`` each key is aggregated by flan eval's metric module."""
    return [{"metric": key, "aggregation": _Function(f"utils.{key}") if hooks else "mean",
             # a count of answers with no number is, like an error, better low
             "higher_is_better": not (lower_is_better(key) or key == "unparsable")}
            for key in keys]


def _utils_source(metric: str, keys: list[str]) -> str:
    """The ``utils.py`` that a generation task's YAML names: flan eval's metric module, through hooks."""
    lines = [f'"""lm-eval hooks written by `flan export lm-eval`: scored by flan eval\'s own {metric} module',
             "(needs flan-builder with its [eval] extra installed where lm-eval runs).",
             '"""', "",
             "from flan_builder.evaluation import lm_eval_hooks", "", "",
             "def process_results(doc, results):",
             f"    return lm_eval_hooks.process_results({metric!r}, doc, results)", ""]
    for key in keys:
        lines += ["", f"def {key}(items):",
                  f"    return lm_eval_hooks.aggregate({metric!r}, {key!r}, items)", ""]
    return "\n".join(lines)


def _docs(rows: list[dict[str, Any]], indices: list[int], split: str, template_index: int,
          renderer: Any, use_options: bool, choice: bool) -> list[dict[str, Any]]:
    """One lm-eval doc per row: the prompt as flan eval sees it, and what it is scored against."""
    docs = []
    for row, index in zip(rows, indices, strict=True):
        example = renderer.render(row, template_index, split=split, row_index=index)
        prompt = example.prompt if use_options else example.input
        if choice:
            docs.append({"prompt": prompt, "choices": example.options, "gold": example.answer_index,
                         "source_index": index})
        else:  # flan eval: the references, else the target
            docs.append({"prompt": prompt, "references": example.references or [example.target],
                         "source_index": index})
    return docs


def _task_yaml(name: str, alias: str, data_file: Path, evaluation: Any, keys: list[str],
               separator: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """One template's lm-eval task: rows from JSONL, fields named (lm-eval copies them as they are)."""
    task: dict[str, Any] = {"task": name, "task_alias": alias, "dataset_path": "json",
                            "dataset_kwargs": {"data_files": {SPLIT: str(data_file)}}, "test_split": SPLIT,
                            "num_fewshot": 0, "output_type": evaluation.output_type, "doc_to_text": "prompt"}
    if evaluation.output_type == "multiple_choice":  # lm-eval scores target_delimiter + choice
        task.update(doc_to_choice="choices", doc_to_target="gold", target_delimiter=separator,
                    metric_list=_metric_list(keys, hooks=False))
    else:
        generation = {"until": list(evaluation.stop), "max_gen_toks": evaluation.max_new_tokens,
                      "do_sample": False}
        task.update(doc_to_target="references", generation_kwargs=generation,
                    process_results=_Function("utils.process_results"),
                    metric_list=_metric_list(keys, hooks=True))
    task["metadata"] = {"version": 1.0, **metadata}
    return task


def _group_yaml(name: str, alias: str, members: list[str], keys: list[str]) -> dict[str, Any]:
    """A group scored by the plain mean over its templates (FLAN's dataset score), not weighted by rows."""
    return {"group": name, "group_alias": alias, "task": members,
            "aggregate_metric_list": [{"metric": k, "aggregation": "mean", "weight_by_size": False}
                                      for k in keys],
            "metadata": {"version": 1.0}}


class _Names:
    """Every lm-eval name the export claims: two entries with one name would shadow each other."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, name: str, what: str) -> str:
        if name in self.owners:
            raise FlanError(f"two exported entries would both be called {name!r} in lm-eval "
                            f"({self.owners[name]} and {what}); rename the task or template in its spec")
        self.owners[name] = what
        return name


def _variant(use_options: bool) -> tuple[str, str]:
    """(name suffix, alias suffix) of an OPTIONS variant."""
    return ("", "") if use_options else (NO_OPTIONS, " (no options)")


def export_lm_eval(config: ExportConfig, registry: Registry | None = None) -> dict[str, Any]:
    """Write the lm-eval tasks, groups and rendered rows to ``config.out`` atomically; return the manifest."""
    from flan_builder.atomic import atomic_directory, check_output_free
    from flan_builder.evaluation.rows import sample_order
    from flan_builder.manifest import command_line, content_hash, package_versions
    from flan_builder.mixing import pool_indices, task_rng
    from flan_builder.progress import progress
    from flan_builder.sources import load_split
    from flan_builder.specs import load_registry
    from flan_builder.templating import TaskRenderer

    if not config.options:
        raise FlanError("--options names no variant; use with, without or both")
    check_output_free(config.out, config.overwrite)
    registry = registry or load_registry(config.templates_dir)
    specs = _chosen_specs(registry, config)
    final = config.out.resolve()  # the YAMLs name their JSONL by this absolute path
    files: dict[str, str] = {}  # relative path -> text
    names = _Names()
    tasks: dict[str, Any] = {}
    clusters: dict[tuple[str, bool], tuple[list[str], list[str]]] = {}  # -> (dataset groups, metric keys)
    hashes = []
    with progress(specs, desc="exporting", unit="task") as bar:
        for spec in bar:
            evaluation = registry.evaluation(spec)
            choice = evaluation.output_type == "multiple_choice"
            keys = ["acc", "acc_norm"] if choice else list(metric_facts(evaluation.metric).keys)
            rows = load_split(spec, "eval", config.data_dir)
            # the held-out rows flan build keeps (all, or its seeded sample), in the order flan
            # eval's --limit takes them, so that lm-eval's --limit N scores the same N rows
            indices = sample_order(spec.name, pool_indices(len(rows), config.max_eval_rows or len(rows),
                                                           task_rng(config.seed, spec.name, "eval")))
            picked = rows.take(indices)
            renderer = TaskRenderer(spec, with_options=True)
            chosen = [i for i, t in enumerate(spec.templates) if not t.inverted][:config.templates]
            folder = _safe(spec.name)
            if not choice:
                files[f"{folder}/utils.py"] = _utils_source(evaluation.metric, keys)
            groups = []
            for use_options in config.options:
                suffix, alias = _variant(use_options)
                members = []
                for index in chosen:
                    template = spec.templates[index]
                    docs = _docs(picked, indices, rows.split, index, renderer, use_options, choice)
                    hashes.append(content_hash(docs))
                    stem = _safe(template.id) + ("" if use_options else ".no-options")
                    files[f"{folder}/{stem}.jsonl"] = "".join(json.dumps(d, ensure_ascii=False) + "\n"
                                                             for d in docs)
                    name = names.claim(f"{PREFIX}_{spec.name}_{template.id}{suffix}",
                                       f"template {template.id} of task {spec.name}")
                    about = {"flan_task": spec.name, "flan_template": template.id,
                             "with_options": use_options}
                    task = _task_yaml(name, template.id + alias, final / folder / f"{stem}.jsonl", evaluation,
                                      keys, config.separator, about)
                    files[f"{folder}/{name}.yaml"] = _yaml(
                        task, f"written by `flan export lm-eval`: {spec.name}, template {template.id}, "
                              f"{'with' if use_options else 'without'} OPTIONS; rows in {stem}.jsonl")
                    members.append(name)
                group = names.claim(f"{PREFIX}_{spec.name}{suffix}", f"the group of task {spec.name}")
                files[f"{folder}/_{group}.yaml"] = _yaml(
                    _group_yaml(group, spec.name + alias, members, keys),
                    f"written by `flan export lm-eval`: {spec.name}, the mean over its templates")
                groups.append(group)
                cluster_groups, cluster_keys = clusters.setdefault((spec.cluster, use_options), ([], []))
                cluster_groups.append(group)
                cluster_keys += [k for k in keys if k not in cluster_keys]
            tasks[spec.name] = {"cluster": spec.cluster, "output_type": evaluation.output_type,
                                "metric": evaluation.metric, "rows": len(indices),
                                "rows_available": len(rows),
                                "templates": [spec.templates[i].id for i in chosen], "groups": groups}
    cluster_groups_written = {}
    for (cluster, use_options), (members, keys) in clusters.items():
        suffix, alias = _variant(use_options)
        group = names.claim(f"{PREFIX}_{cluster}{suffix}", f"the group of cluster {cluster}")
        files[f"_{group}.yaml"] = _yaml(
            _group_yaml(group, cluster + alias, members, keys),
            f"written by `flan export lm-eval`: cluster {cluster}, the mean over every template of its "
            "datasets")
        cluster_groups_written[group] = members
    manifest = {
        "kind": "flan-builder lm-eval export",
        "command": command_line(),
        "config": config.to_json(),
        "versions": package_versions(),
        "tasks": tasks,
        "cluster_groups": cluster_groups_written,
        "lm_eval_tasks": sum(1 for what in names.owners.values() if what.startswith("template")),
        "content_hash": content_hash([{"template": h} for h in hashes]),
    }
    with atomic_directory(config.out, overwrite=config.overwrite) as tmp:
        for relative, text in files.items():
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    return manifest


# -- CLI (the parser and command live in flan_builder/cli.py, which owns --data-dir / --templates-dir) --

HELP = "lm-evaluation-harness tasks: one per template, a group per dataset and per cluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``flan export lm-eval`` (cli.py adds --data-dir and --templates-dir)."""
    from flan_builder.cli_args import comma_list, positive_int

    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--tasks", type=comma_list, default=None, help="these tasks (comma list)")
    parser.add_argument("--cluster", action="append", default=None,
                        help="every task of this cluster (repeatable; default with no --tasks: every "
                             "cluster that is not opt-in)")
    parser.add_argument("--templates", type=positive_int, default=None, help="first K templates per dataset")
    parser.add_argument("--options", choices=("with", "without", "both"), default=None,
                        help="OPTIONS suffix (default: with); without/both add tasks named *_no_options")
    parser.add_argument("--no-options", action="store_true", help="same as --options without")
    parser.add_argument("--separator", default=None,
                        help="lm-eval's target_delimiter, as flan eval --separator (default '\\n\\n', the "
                             "build's; ' ' is lm-eval's own); backslash escapes are read")
    parser.add_argument("--max-eval-rows", type=positive_int, default=None,
                        help="held-out rows per dataset: flan build's seeded sample (default: all rows)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed, as flan build --seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def export_from_args(args: argparse.Namespace, templates_dir: Path | list[Path] | None) -> int:
    """``flan export lm-eval``: export, then say what was written and how to run it."""
    from flan_builder.evaluation.cli import separator
    from flan_builder.evaluation.suite import OPTIONS
    from flan_builder.sources import resolve_data_dir

    config = ExportConfig(
        out=Path(args.out), data_dir=resolve_data_dir(args.data_dir), tasks=args.tasks, clusters=args.cluster,
        options=OPTIONS["without" if args.no_options else (args.options or "with")],
        separator=DEFAULT_SEPARATOR if args.separator is None else separator(args.separator),
        templates=args.templates, max_eval_rows=args.max_eval_rows, seed=args.seed,
        templates_dir=templates_dir, overwrite=args.overwrite)
    manifest = export_lm_eval(config)
    tasks = manifest["tasks"]
    groups = ",".join(manifest["cluster_groups"])
    rows = sum(t["rows"] for t in tasks.values())
    prompts = sum(t["rows"] * len(t["templates"]) * len(config.options) for t in tasks.values())
    print(f"{manifest['lm_eval_tasks']} lm-eval tasks: {len(tasks)} datasets, {rows:,} held-out rows, "
          f"{prompts:,} prompts; separator {config.separator!r}, content hash "
          f"{manifest['content_hash'][:16]} -> {config.out}")
    print(f"groups: {groups} (clusters) and flan_<task> (datasets)")
    print(f"run: lm_eval --model hf --model_args pretrained=MODEL --include_path {config.out} "
          f"--tasks {groups}")
    return 0

"""The held-out rows of a built dataset, grouped by (task, template), and how each task is scored."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.manifest import read_dataset_manifest

Groups = dict[tuple[str, str], list[dict[str, Any]]]


def load_heldout(data: Path, *, tasks: list[str] | None = None, template_filter: list[str] | None = None,
                 templates: int | None = None, limit: int | None = None) -> tuple[Groups, dict[str, Any]]:
    """(task, template) -> held-out rows after the filters (first ``limit`` rows by source index)."""
    from datasets import load_from_disk

    manifest = read_dataset_manifest(data)
    dataset = load_from_disk(str(data))
    if "heldout" not in dataset:
        raise FlanError(f"{data} has no held-out split (built with --heldout none?); "
                        "build one with `flan build --heldout CLUSTER`")
    rows = [r for r in dataset["heldout"].to_list() if not r["inverted"]]
    if tasks:
        rows = [r for r in rows if r["task"] in tasks]
    groups: Groups = defaultdict(list)
    templates_seen: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        seen = templates_seen[row["task"]]
        if row["template_id"] not in seen:
            seen.append(row["template_id"])
        groups[(row["task"], row["template_id"])].append(row)
    chosen: Groups = {}
    for task, template_ids in templates_seen.items():
        if template_filter:
            template_ids = [t for t in template_ids if any(f in t for f in template_filter)]
        for template_id in template_ids[:templates]:
            group = sorted(groups[(task, template_id)], key=lambda r: r["source_index"])
            chosen[(task, template_id)] = group[:limit]
    if not chosen:
        raise FlanError(f"no held-out rows match the filters (--templates / --template / --task) in {data}")
    return chosen, manifest


def task_evaluations(manifest: dict[str, Any], tasks: set[str]) -> dict[str, dict[str, Any]]:
    """task -> how it is scored: from the build's manifest, else (older builds) from its spec."""
    recorded = manifest.get("evaluation") or {}
    missing = sorted(tasks - set(recorded))
    if not missing:
        return {task: recorded[task] for task in tasks}
    from flan_builder.specs import load_registry

    registry = load_registry()
    found = dict(recorded)
    for task in missing:
        found[task] = registry.evaluation(registry.task(task)).to_json()
    return {task: found[task] for task in tasks}

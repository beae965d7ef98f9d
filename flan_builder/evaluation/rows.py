"""The held-out rows of a built dataset, grouped by (task, template), and how each task is scored."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.manifest import read_dataset_manifest

Groups = dict[tuple[str, str], list[dict[str, Any]]]


def load_heldout(data: Path, *, tasks: list[str] | None = None, template_filter: list[str] | None = None,
                 templates: int | None = None, limit: int | None = None) -> tuple[Groups, dict[str, Any]]:
    """(task, template) -> held-out rows after the filters, in source order.

    ``limit`` keeps a seeded sample of each task's rows (`sample_rows`), the same source rows for
    every template and every model: the first rows by source index would follow the source's
    own order, and some sources are sorted by label (rotten_tomatoes' first 533 are positive).
    """
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
        sources = {r["source_index"] for t in template_ids for r in groups[(task, t)]}
        wanted = sample_rows(task, sources, limit)
        if template_filter:
            template_ids = [t for t in template_ids if any(f in t for f in template_filter)]
        for template_id in template_ids[:templates]:
            group = sorted(groups[(task, template_id)], key=lambda r: r["source_index"])
            chosen[(task, template_id)] = [r for r in group if r["source_index"] in wanted]
    if not chosen:
        raise FlanError(f"no held-out rows match the filters (--templates / --template / --task) in {data}")
    return chosen, manifest


def sample_order(task: str, source_indices: Iterable[int]) -> list[int]:
    """A task's source rows in the order ``--limit`` takes them: by a hash of (task, row), so
    stable across runs, machines and builds that hold the same rows, and blind to the rows'
    order and labels. `flan export lm-eval` writes its docs in this order, so lm-eval's own
    ``--limit N`` takes the same rows."""

    def key(index: int) -> bytes:
        return hashlib.blake2b(f"{task}\x00{index}".encode(), digest_size=8).digest()

    return sorted(source_indices, key=key)


def sample_rows(task: str, source_indices: set[int], limit: int | None) -> set[int]:
    """``limit`` of a task's source rows (the first ``limit`` in `sample_order`)."""
    if limit is None or limit >= len(source_indices):
        return set(source_indices)
    return set(sample_order(task, source_indices)[:limit])


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

"""Where rows come from: the Hugging Face Hub, a local mirror with the same schema, or a table.

A mirror is a directory ``DIR/<mirror>/<split>.jsonl`` holding the Hub dataset's rows
with its field names and label encoding, so one task spec serves both.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.sources.jsonl import JsonlLines
from flan_builder.specs import TaskSpec

DATA_DIR_ENV = "FLAN_DATA_DIR"


def resolve_data_dir(value: str | os.PathLike[str] | None) -> Path | None:
    """``--data-dir``, else ``$FLAN_DATA_DIR``, else None (load from the Hub)."""
    chosen = value if value is not None else os.environ.get(DATA_DIR_ENV)
    if chosen in (None, ""):
        return None
    path = Path(chosen)
    if not path.is_dir():
        raise FlanError(f"data directory {path} does not exist; pass --data-dir DIR with a local "
                        f"mirror (DIR/<dataset>/<split>.jsonl), or omit it to load from the Hub")
    return path


@dataclass
class Rows:
    """A split's rows; Hub splits stay as Arrow tables until rows are picked."""

    task: str
    split: str
    origin: str  # a file path or hub id, for messages and the manifest
    _rows: Sequence[dict[str, Any]] | Any  # list of dicts, a mirror's JsonlLines, or a datasets.Dataset

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The rows at ``indices``, as dicts, in that order."""
        if isinstance(self._rows, list):
            return [self._rows[i] for i in indices]
        if isinstance(self._rows, JsonlLines):
            return self._rows.take(indices)
        return self._rows.select(list(indices)).to_list()

    def all(self) -> list[dict[str, Any]]:
        return self.take(range(len(self)))


def split_for(spec: TaskSpec, role: str) -> str | None:
    """The split name a task uses for a role ('train' or 'eval'), if it has one."""
    return spec.source.splits.get(role)


def mirror_path(spec: TaskSpec, split: str, data_dir: Path) -> Path:
    return data_dir / spec.source.mirror / f"{split}.jsonl"


def available_roles(spec: TaskSpec, data_dir: Path | None) -> dict[str, bool]:
    """For each role the spec declares, whether its rows are present (always True for the Hub)."""
    return {
        role: data_dir is None or spec.source.tabular is not None
        or mirror_path(spec, split, data_dir).is_file()
        for role, split in spec.source.splits.items()
    }


def _load_hub(spec: TaskSpec, split: str) -> Any:
    import datasets  # deferred: only the Hub path needs the loader machinery

    try:
        return datasets.load_dataset(
            spec.source.hub_id, spec.source.config, split=split, revision=spec.source.revision
        )
    except Exception as exc:  # the Hub raises many types; all mean "could not load"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlanError(
            f"task {spec.name}: could not load {spec.source.hub_id}"
            f"{'/' + spec.source.config if spec.source.config else ''} split {split} from the Hub "
            f"({first_line}); check the network, or pass --data-dir with a local mirror"
        ) from None


def eval_slice_indices(spec: TaskSpec, size: int) -> list[int]:
    """The train-split rows a task with ``source.eval_slice`` evaluates on: a seeded sample, in order.

    Seeded by the spec alone (its own seed and the task name), not the build's seed, so every
    build, evaluation and exemplar draw agrees on which rows never train.
    """
    carve = spec.source.eval_slice or {}
    rows = carve.get("rows", 0)
    if rows >= size:
        raise FlanError(f"task {spec.name}: source.eval_slice.rows is {rows} but its split has only {size} "
                        f"rows, which would leave none to train on; lower it in {spec.path}")
    return sorted(random.Random(f"{carve.get('seed', 0)}/{spec.name}/eval-slice").sample(range(size), rows))


def _carve(spec: TaskSpec, role: str, rows: Rows) -> Rows:
    """A task whose eval rows are a slice of its train split: that slice, or the split without it."""
    held = eval_slice_indices(spec, len(rows))
    if role == "eval":
        keep, label = held, "eval slice"
    else:
        chosen = set(held)
        keep, label = [i for i in range(len(rows)) if i not in chosen], "without the eval slice"
    carve = spec.source.eval_slice or {}
    picked = ([rows._rows[i] for i in keep] if isinstance(rows._rows, list)
              else rows._rows.select(keep))
    return Rows(rows.task, f"{rows.split}[{label}]",
                f"{rows.origin} ({label}: {len(held):,} rows, seed {carve.get('seed', 0)})", picked)


def _check_fields(spec: TaskSpec, rows: Rows, sample: list[dict[str, Any]]) -> None:
    for index, row in enumerate(sample):
        missing = [name for name in spec.fields if name not in row]
        if missing:
            raise FlanError(
                f"task {spec.name}: {rows.split} row {index} of {rows.origin} lacks field(s) "
                f"{', '.join(missing)} (it has: {', '.join(sorted(row))}); "
                f"fix the data or the spec's 'fields' in {spec.path}"
            )


def load_split(spec: TaskSpec, role: str, data_dir: Path | None) -> Rows:
    """Load the split a task uses for ``role``; every missing piece is a FlanError saying what to do."""
    split = split_for(spec, role)
    if split is None:
        raise FlanError(f"task {spec.name} has no {role} split (its spec declares: "
                        f"{', '.join(spec.source.splits)})")
    if spec.source.tabular is not None:  # a table, split and serialised here (no Hub, no mirror)
        from flan_builder.sources.serialise import tabular_split

        table_rows, origin = tabular_split(spec, split)
        rows = Rows(spec.name, split, origin, table_rows)
    elif data_dir is not None:
        folder = data_dir / spec.source.mirror
        if not folder.is_dir():
            raise FlanError(f"task {spec.name}: dataset folder {folder} not found in the mirror; "
                            f"add it, or drop --data-dir to load {spec.source.hub_id} from the Hub")
        path = mirror_path(spec, split, data_dir)
        if not path.is_file():
            present = sorted(p.stem for p in folder.glob("*.jsonl"))
            raise FlanError(f"task {spec.name}: split {split!r} not found ({path} is missing; "
                            f"present: {', '.join(present) or 'none'})")
        # checked line by line and kept as offsets: rows are parsed again when taken (jsonl.py)
        lines = JsonlLines.index(path, spec.name, split, spec.fields, spec.path)
        rows = Rows(spec.name, split, str(path), lines)
    elif not spec.source.hub_id:
        raise FlanError(f"task {spec.name} has no Hub copy (its spec names no source.hub_id); pass "
                        f"--data-dir DIR with {spec.source.mirror}/{split}.jsonl in it (or set "
                        f"{DATA_DIR_ENV})")
    else:
        rows = Rows(spec.name, split, f"hub:{spec.source.hub_id}", _load_hub(spec, split))
    if len(rows) == 0:
        raise FlanError(f"task {spec.name}: split {split!r} of {rows.origin} is empty")
    if spec.source.eval_slice is not None:
        rows = _carve(spec, role, rows)
    if isinstance(rows._rows, list):
        _check_fields(spec, rows, rows._rows)
    elif not isinstance(rows._rows, JsonlLines):  # a mirror's lines were checked as they were read
        missing = [f for f in spec.fields if f not in rows._rows.column_names]
        if missing:
            raise FlanError(f"task {spec.name}: {rows.origin} split {split} has no field(s) "
                            f"{', '.join(missing)}; fix the spec's 'fields' in {spec.path}")
    return rows

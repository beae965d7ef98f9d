"""Shards: the unit of rendering work, and ``render_shard``, the public function that renders one.

A shard is a slice of one task's plan: rows of the task's source split (by index) × the templates
drawn for each, with each rendered row's place in its output split. ``flan build`` cuts every task
into shards of at most ``SHARD_ROWS`` rendered rows and has ``datasets`` write them to Arrow on
disk (``Dataset.map`` over the shard list, ``num_proc`` processes), then puts the rows in mixture
order by their ``POSITION`` column (``writer.py``). Nothing in a shard needs the rest of the build:
a distributed job (Ray Data, Spark) can call ``render_shard`` on each shard and sort by
``POSITION`` to get the same split (README, "Larger than one machine").
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flan_builder.fewshot import FALLBACK, TaskPlan, shape_records
from flan_builder.manifest import canonical_json, row_hash
from flan_builder.sources import Rows
from flan_builder.specs import TaskSpec
from flan_builder.templating import RenderedExample, TaskRenderer

SHARD_ROWS = 8192  # rendered rows per shard: a shard's Python rows are what a worker holds at once
POSITION = "_position"  # the row's place in its split (train: after the seeded shuffle)
CANONICAL = "_canonical"  # the row's hashed columns as canonical JSON (the content hash, in order)
PRIVATE_COLUMNS = (POSITION, FALLBACK, CANONICAL)  # carried between passes, never written out


def record(
    spec: TaskSpec, example: RenderedExample, source_split: str, index: int, source_hash: str,
    style: str, template_index: int, fmt: str,
) -> dict[str, Any]:
    """One output row (the schema of ``features``)."""
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


def features(style: str, private: bool = False) -> Any:
    """The output schema; ``private`` adds the columns a shard carries between passes."""
    from datasets import Features, List, Value

    text = Value("string")
    if style == "messages":
        turn = {"role": text, "content": text}
        prompt: Any = List(turn)
        completion: Any = List(turn)
    else:
        prompt = completion = text
    columns = {
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
    }
    if private:
        columns.update({POSITION: Value("int64"), FALLBACK: text, CANONICAL: Value("binary")})
    return Features(columns)


@dataclass(frozen=True)
class StoredPositions:
    """Positions a shard reads when it is rendered instead of carrying them: ``count`` integers from
    entry ``start`` of the file ``path`` (``dtype``, native byte order; a split's shuffle, written
    once), or with no file, ``start, start + 1, ...`` (plan order). It pickles as those few fields,
    so a build of millions of rows does not hold, pickle and send every shard's positions; slices
    like an array and gives ``tolist()`` and ``np.asarray``."""

    path: Path | None
    start: int
    count: int
    dtype: str = "int64"

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: slice) -> StoredPositions:
        start, stop, step = key.indices(self.count)
        if step != 1:
            raise ValueError("stored positions slice with step 1 only")
        return dataclasses.replace(self, start=self.start + start, count=max(0, stop - start))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.path is None:
            values = np.arange(self.start, self.start + self.count, dtype=np.int64)
        else:
            item = np.dtype(self.dtype)
            values = np.fromfile(self.path, dtype=item, count=self.count, offset=self.start * item.itemsize)
            if len(values) != self.count:
                raise ValueError(f"{self.path} holds fewer than {self.start + self.count} positions")
        return values if dtype is None else values.astype(dtype, copy=False)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    @classmethod
    def write(cls, positions: np.ndarray, path: Path) -> StoredPositions:
        """``positions`` saved to ``path``, as stored positions over the whole file."""
        positions.tofile(path)
        return cls(Path(path), 0, len(positions), positions.dtype.name)


@dataclass
class Shard:
    """Rows of one task's split × templates, and where each rendered row goes in its output split.

    ``indices`` are source row indices (a row may repeat: the mixture cycles through small
    datasets). Each row is rendered with its entry of ``row_templates`` when that is given, else
    with every template in ``templates``; rows come out row by row, template by template.
    A shard pickles with its source split (a Hub split pickles as the path of its Arrow file).
    """

    spec: TaskSpec
    source: Rows
    indices: np.ndarray  # int64, one per drawn row
    templates: tuple[int, ...]  # every row's templates, when row_templates is None
    with_options: bool
    separator: str
    style: str
    row_templates: np.ndarray | None = None  # int32, one template per drawn row
    fewshot: TaskPlan | None = None  # formats and exemplars of a mixed-format build
    # integers, one per rendered row (an array, or StoredPositions read when rendered); None: not placed
    positions: np.ndarray | StoredPositions | None = None
    hashed: tuple[str, ...] = ()  # columns of the content hash (CANONICAL); empty: none

    @property
    def split(self) -> str:
        return self.source.split

    def __len__(self) -> int:
        """Rendered rows."""
        per_row = 1 if self.row_templates is not None else len(self.templates)
        return len(self.indices) * per_row

    def row_template_lists(self) -> Iterator[list[int]]:
        """Each drawn row's template indices."""
        if self.row_templates is None:
            shared = list(self.templates)
            return (shared for _ in range(len(self.indices)))
        return ([int(t)] for t in self.row_templates)

    def prompt_rows(self) -> tuple[list[int], list[dict[str, Any]]]:
        """Every distinct source row the shard's prompts show: its rows and their exemplars."""
        indices = list(dict.fromkeys(self.indices.tolist()))  # first-seen order, once each
        rows = self.source.take(indices)
        if self.fewshot is None:
            return indices, rows
        more, more_rows = self.fewshot.source_rows()
        return indices + more, rows + more_rows

    def slice(self, start: int, stop: int) -> Shard:
        """Drawn rows ``start:stop`` (positions must be set)."""
        per_row = 1 if self.row_templates is not None else len(self.templates)
        plan = self.fewshot
        if plan is not None:
            exemplars = plan.exemplars[start:stop]
            needed = {i for row in exemplars for chosen in row for i in chosen}
            plan = dataclasses.replace(
                plan, formats=plan.formats[start:stop], exemplars=exemplars,
                exemplar_templates=plan.exemplar_templates[start:stop],
                exemplar_rows={i: plan.exemplar_rows[i] for i in needed}, drawn=Counter())
        return dataclasses.replace(
            self, indices=self.indices[start:stop],
            row_templates=None if self.row_templates is None else self.row_templates[start:stop],
            fewshot=plan,
            positions=None if self.positions is None else self.positions[start * per_row:stop * per_row])

    def split_rows(self, max_rows: int | None = None) -> list[Shard]:
        """Consecutive shards of at most ``max_rows`` (default ``SHARD_ROWS``) rendered rows; a row's
        templates stay together."""
        max_rows = max_rows or SHARD_ROWS
        per_row = 1 if self.row_templates is not None else max(len(self.templates), 1)
        step = max(1, max_rows // per_row)
        return [self.slice(start, min(start + step, len(self.indices)))
                for start in range(0, len(self.indices), step)]


def render_shard(shard: Shard, renderer: TaskRenderer | None = None) -> list[dict[str, Any]]:
    """Render a shard: its rows in plan order, each with its ``POSITION`` in the output split.

    This is the function a distributed build calls once per shard (Ray Data ``flat_map``, Spark
    ``flatMap``): it needs only the shard. Besides the output columns (``features``), each row
    carries ``POSITION``, few-shot's ``FALLBACK`` note, and ``CANONICAL`` (the bytes that the
    content hash reads, in order, when ``shard.hashed`` is set); drop them before publishing.
    ``renderer``: the task's compiled templates, when the caller already has them.
    """
    spec = shard.spec
    if renderer is None:  # e.g. in a worker process: compile there (compiled templates don't pickle)
        renderer = TaskRenderer(spec, with_options=shard.with_options, separator=shard.separator)
    fmt = "zs_opt" if shard.with_options else "zs_noopt"
    indices = shard.indices.tolist()
    distinct = sorted(set(indices))
    rows = dict(zip(distinct, shard.source.take(distinct), strict=True))
    hashes = {index: row_hash({k: row[k] for k in spec.fields}) for index, row in rows.items()}
    template_lists = list(shard.row_template_lists())
    # one batch call for the shard: a row's templates share its context
    examples = iter(renderer.render_rows([rows[index] for index in indices], template_lists,
                                         split=shard.split, row_indices=indices))
    records = [record(spec, next(examples), shard.split, index, hashes[index], shard.style,
                      template_index, fmt)
               for index, template_indices in zip(indices, template_lists, strict=True)
               for template_index in template_indices]
    if shard.fewshot is not None:
        records = shape_records(records, shard.fewshot, renderer, spec, shard.separator, shard.style)
    positions = shard.positions.tolist() if shard.positions is not None else [None] * len(records)
    for row_record, position in zip(records, positions, strict=True):
        row_record[POSITION] = position
        row_record.setdefault(FALLBACK, None)
        if shard.hashed:
            row_record[CANONICAL] = canonical_json({k: row_record[k] for k in shard.hashed}).encode("utf-8")
    return records


def shard_table(shard: Shard, renderer: TaskRenderer | None = None) -> Any:
    """``render_shard`` as one Arrow table (output columns and the private ones)."""
    import pyarrow as pa

    schema = features(shard.style, private=True).arrow_schema
    return pa.Table.from_pylist(render_shard(shard, renderer), schema=schema)


def placed(shards: Sequence[Shard], positions: np.ndarray | StoredPositions | None = None,
           max_rows: int | None = None) -> list[Shard]:
    """The shards cut to size, each with its rows' positions: ``positions[u]`` for the split's
    ``u``-th row in plan order (None: plan order is the split's order)."""
    out: list[Shard] = []
    start = 0
    for shard in shards:
        count = len(shard)
        where = (np.arange(start, start + count, dtype=np.int64) if positions is None
                 else positions[start:start + count])
        start += count
        if count:
            out.extend(dataclasses.replace(shard, positions=where).split_rows(max_rows))
    return out

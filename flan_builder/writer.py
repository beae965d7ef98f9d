"""Writing a built dataset in bounded memory: shards -> Arrow on disk -> mixture order -> saved.

1. Render: ``datasets``' ``Dataset.map`` over the list of shards (batched, one shard per call,
   ``num_proc`` processes) writes each shard's rows (``shards.shard_table``) to Arrow files in a
   work folder. ``map`` rather than ``Dataset.from_generator``: the generator path encodes every
   row through ``Features.encode_example`` (54 µs a row here, twice the rendering itself), while a
   shard returned as one Arrow table is written at ~3 µs a row.
2. One pass over those files in plan order, a chunk of record batches at a time: counts, the
   few-shot tally, the held-out leak check, and each row sent to the bucket of its output
   position (``POSITION // bucket_rows``): the first half of an external sort.
3. Bucket by bucket (each a contiguous range of output rows, at most ``BUCKET_BYTES``): sort by
   position, feed the content hash, write Arrow (and the ``--format`` exports).
4. ``DatasetDict.save_to_disk`` over the ordered files.

Nothing held in memory grows with the output: a shard's Python rows, a chunk, a bucket. Files are
read with ``pa.OSFile``, not memory-mapped: a mapped file's pages count in the process's RSS, so
reading a whole split through a map would grow RSS with it (the figure ``bench/build.py`` reports).
For the same reason a large split is saved by ``save_to_disk``'s own worker process (``num_proc=1``),
whose mapped pages go when each saved shard is done.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flan_builder import shards as shards_module
from flan_builder.errors import FlanError
from flan_builder.fewshot import FALLBACK, FormatTally
from flan_builder.processes import exit_with_parent
from flan_builder.shards import CANONICAL, POSITION, PRIVATE_COLUMNS, Shard, features, shard_table
from flan_builder.templating import TaskRenderer

CHUNK_ROWS = 32_768  # rows read per step of the routing pass ...
CHUNK_BYTES = 32 << 20  # ... or fewer: a task of long rows would make a chunk of rows several times larger
BUCKET_BYTES = 64 << 20  # rendered bytes (private columns included) sorted at once
HASH_ROWS = 4096  # rows' canonical bytes joined at once for the content hash
SPAWN_SAVE_BYTES = 256 << 20  # larger splits are saved by save_to_disk's worker process (see above)


@dataclass
class WrittenSplit:
    """One split in mixture order, in Arrow files under the work folder."""

    files: list[Path]
    rows: int
    content_hash: str
    counts: dict[str, Any]
    nbytes: int = 0


@dataclass
class LeakCheck:
    """Training rows that show a held-out row (as the row or a few-shot exemplar)."""

    heldout_hashes: set[str]
    leaked: int = 0
    first: tuple[int, dict[str, Any]] | None = None  # (output position, row) of the first leak

    def scan(self, table: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.heldout_hashes:
            return
        values = pa.array(sorted(self.heldout_hashes), pa.string())
        hit = pc.is_in(table["source_hash"], value_set=values).to_numpy(zero_copy_only=False)
        exemplars = table["exemplar_hashes"].combine_chunks()
        flat = pc.list_flatten(exemplars)
        if len(flat):
            parents = pc.list_parent_indices(exemplars).to_numpy()
            found = pc.is_in(flat, value_set=values).to_numpy(zero_copy_only=False)
            hit = hit.copy()
            hit[parents[found]] = True
        if not hit.any():
            return
        self.leaked += int(hit.sum())
        positions = table[POSITION].to_numpy()
        where = int(np.flatnonzero(hit)[np.argmin(positions[hit])])
        if self.first is None or positions[where] < self.first[0]:
            row = table.slice(where, 1).select(["task", "source_split", "source_index"]).to_pylist()[0]
            self.first = (int(positions[where]), row)

    def raise_if_leaked(self) -> None:
        if self.first is None:
            return
        row = self.first[1]
        raise FlanError(f"{self.leaked} training rows repeat a held-out row in the row or its few-shot "
                        f"exemplars (first: task {row['task']}, {row['source_split']} row "
                        f"{row['source_index']}); remove the duplicate from the training data")


@dataclass
class _Counts:
    """The manifest's counts of one split, added up a chunk at a time."""

    total: int = 0
    inverted: int = 0
    per_template: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, table: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = table.select(["task", "cluster", "template_id"]).append_column(
            "inv", pc.cast(table["inverted"], pa.int64()))
        grouped = keys.group_by(["task", "cluster", "template_id"]).aggregate(
            [("inv", "sum"), ("inv", "count")])
        for row in grouped.to_pylist():
            self.per_template[(row["task"], row["cluster"])][row["template_id"]] += row["inv_count"]
            self.inverted += row["inv_sum"]
            self.total += row["inv_count"]

    def to_json(self) -> dict[str, Any]:
        per_task: Counter[str] = Counter()
        per_cluster: Counter[str] = Counter()
        templates: dict[str, Counter[str]] = defaultdict(Counter)
        for (task, cluster), counter in self.per_template.items():
            n = sum(counter.values())
            per_task[task] += n
            per_cluster[cluster] += n
            templates[task].update(counter)
        return {
            "total": self.total,
            "per_cluster": dict(sorted(per_cluster.items())),
            "per_task": dict(sorted(per_task.items())),
            "per_template": {t: dict(sorted(c.items())) for t, c in sorted(templates.items())},
            "inverted": self.inverted,
        }


def _tally_formats(tally: FormatTally, table: Any) -> None:
    import pyarrow.compute as pc

    formats = table["format"]
    for item in pc.value_counts(formats).to_pylist():
        tally.per_format[item["values"]] += item["counts"]
    few = pc.starts_with(formats, "fs")
    lengths = pc.filter(pc.list_value_length(table["exemplar_indices"]), few)
    tally.few_shot_rows += len(lengths)
    tally.shots += int(pc.sum(lengths).as_py() or 0)
    fell = pc.is_valid(table[FALLBACK])
    if pc.any(fell).as_py():
        notes = table.filter(fell).select(["task", "template_id", "source_split", "source_index",
                                           "format", FALLBACK])
        for note in notes.to_pylist():
            tally.add_fallback(note, note.pop(FALLBACK))


_watching: list[int] = []  # this worker already watches for its parent's death
_rendering = False  # True while render() runs map: its forked workers watch their parent


def _watch_parent_after_fork() -> None:
    # A map worker must not outlive a killed build; started at the fork, since unpickling a job
    # (every shard's source rows) can take longer than a test or a user waits.
    if _rendering:
        _watching.append(os.getppid())
        exit_with_parent(os.getppid())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watch_parent_after_fork)


def _render_shards(batch: dict[str, list[Any]], shards: list[Shard],
                   renderers: dict[int, TaskRenderer], parent: int) -> Any:
    """Dataset.map's function: one shard index in, that shard's rows out as one Arrow table."""
    if os.getpid() != parent and not _watching:  # a worker not forked (spawn, forkserver)
        exit_with_parent(parent)
        _watching.append(parent)
    (index,) = batch["shard"]
    shard = shards[index]
    renderer = renderers.get(id(shard.spec))
    if renderer is None:  # a worker process: compile once per task (templates don't pickle)
        renderer = TaskRenderer(shard.spec, with_options=shard.with_options, separator=shard.separator)
        renderers[id(shard.spec)] = renderer
    return shard_table(shard, renderer)


def render(name: str, shards: list[Shard], work: Path, style: str, num_proc: int,
           renderers: dict[str, TaskRenderer]) -> list[Path]:
    """Write the shards' rows to Arrow files under ``work`` (in shard order); their paths."""
    from datasets import Dataset

    if not shards:
        return []
    global _rendering
    in_process = num_proc <= 1
    # In this process the build's compiled templates are reused; a worker compiles its own.
    compiled = {id(r.spec): r for r in renderers.values()} if in_process else {}
    _rendering = not in_process
    try:
        rendered = Dataset.from_dict({"shard": list(range(len(shards)))}).map(
            _render_shards, batched=True, batch_size=1, remove_columns=["shard"],
            features=features(style, private=True),
            fn_kwargs={"shards": shards, "renderers": compiled, "parent": os.getpid()},
            num_proc=None if in_process else num_proc, cache_file_name=str(work / f"{name}-rendered.arrow"),
            new_fingerprint=uuid.uuid4().hex, load_from_cache_file=False, desc=f"rendering {name}",
            # a shard's rows as one record batch: with num_proc the parent opens the workers' files,
            # reading every batch's header through a memory map (pages faulted in around each)
            writer_batch_size=shards_module.SHARD_ROWS,
        )
    finally:
        _rendering = False
    files = [Path(f["filename"]) for f in rendered.cache_files]
    del rendered  # its memory maps; the files are read below without one
    return files


def _batches(files: list[Path]) -> Iterator[Any]:
    import pyarrow as pa

    for path in files:
        with pa.OSFile(str(path), "rb") as handle:
            yield from pa.ipc.open_stream(handle)


def _chunks(files: list[Path]) -> Iterator[Any]:
    import pyarrow as pa

    pending, size, nbytes = [], 0, 0
    for batch in _batches(files):
        pending.append(batch)
        size += batch.num_rows
        nbytes += batch.nbytes
        if size >= CHUNK_ROWS or nbytes >= CHUNK_BYTES:
            yield pa.Table.from_batches(pending)
            pending, size, nbytes = [], 0, 0
    if pending:
        yield pa.Table.from_batches(pending)


class _Exports:
    """``--format`` files, appended bucket by bucket in output order."""

    def __init__(self, folder: Path, name: str, formats: tuple[str, ...], style: str) -> None:
        import pyarrow.parquet as pq

        self.handles: list[Any] = []
        self.parquet = None
        self.jsonl = None
        self.style = style
        if formats:
            folder.mkdir(exist_ok=True)
        if "parquet" in formats:
            self.parquet = pq.ParquetWriter(str(folder / f"{name}.parquet"),
                                            schema=features(style).arrow_schema)
        if "jsonl" in formats:
            self.jsonl = (folder / f"{name}.jsonl").open("wb")

    def write(self, table: Any) -> None:
        from datasets import Dataset, DatasetInfo, config
        from datasets.table import InMemoryTable

        if self.parquet is not None:  # row groups of datasets' to_parquet batch size
            step = config.DEFAULT_MAX_BATCH_SIZE
            for start in range(0, table.num_rows, step):
                self.parquet.write_table(table.slice(start, step))
        if self.jsonl is not None:
            part = Dataset(InMemoryTable(table), info=DatasetInfo(features=features(self.style)))
            part.to_json(self.jsonl, lines=True, force_ascii=False)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.jsonl is not None:
            self.jsonl.close()


def order(name: str, files: list[Path], rows: int, work: Path, style: str, *,
          tally: FormatTally | None = None, leaks: LeakCheck | None = None,
          export_dir: Path | None = None, export_formats: tuple[str, ...] = ()) -> WrittenSplit:
    """Put a rendered split in output order (by POSITION) in bounded memory; count and hash it."""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    counts = _Counts()
    rendered_bytes = sum(p.stat().st_size for p in files)
    per_row = max(1, rendered_bytes // max(rows, 1))
    bucket_rows = max(1000, BUCKET_BYTES // per_row // 1000 * 1000)  # whole parquet row groups
    buckets = max(1, -(-rows // bucket_rows))
    held: list[Any] = []  # one bucket: keep the chunks instead of writing them out
    writers: dict[int, tuple[Any, Any]] = {}  # bucket -> (file, stream writer)
    bucket_path = [work / f"{name}-bucket-{k:05d}.arrow" for k in range(buckets)]
    seen = 0
    for chunk in _chunks(files):
        seen += chunk.num_rows
        counts.add(chunk)
        if tally is not None:
            _tally_formats(tally, chunk)
        if leaks is not None:
            leaks.scan(chunk)
        if buckets == 1:
            held.append(chunk)
            continue
        bucket = chunk[POSITION].to_numpy() // bucket_rows
        by_bucket = np.argsort(bucket, kind="stable")
        chunk = chunk.take(by_bucket)
        bounds = np.searchsorted(bucket[by_bucket], np.arange(buckets + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            if k not in writers:
                sink = pa.OSFile(str(bucket_path[k]), "wb")
                writers[k] = (sink, pa.ipc.new_stream(sink, chunk.schema))
            writers[k][1].write_table(chunk.slice(bounds[k], bounds[k + 1] - bounds[k]))
    for sink, stream in writers.values():
        stream.close()
        sink.close()
    if seen != rows:
        raise AssertionError(f"{name}: {seen} rows rendered for {rows} planned")
    for path in files:
        path.unlink()
    if leaks is not None:
        leaks.raise_if_leaked()

    digest = hashlib.sha256()  # manifest.content_hash's digest, fed in output order
    out_features = features(style)
    exports = _Exports(export_dir, name, export_formats, style) if export_dir is not None else None
    ordered, nbytes = [], 0
    try:
        for k in range(buckets):
            if buckets == 1:
                table = pa.concat_tables(held) if held else None
                held = []
            elif bucket_path[k].exists():
                with pa.OSFile(str(bucket_path[k]), "rb") as handle:
                    table = pa.ipc.open_stream(handle).read_all()
                bucket_path[k].unlink()
            else:
                table = None
            if table is None or table.num_rows == 0:
                continue
            positions = table[POSITION].to_numpy()
            sort = np.argsort(positions)
            expected = np.arange(k * bucket_rows, k * bucket_rows + len(sort))
            if not np.array_equal(positions[sort], expected):
                raise AssertionError(f"{name}: output rows {expected[0]}-{expected[-1]} are not each "
                                     "rendered once")
            table = table.take(sort)
            canonical = table[CANONICAL]
            for start in range(0, len(canonical), HASH_ROWS):  # a few Python bytes at a time, not a bucket's
                digest.update(b"\n".join(canonical.slice(start, HASH_ROWS).to_pylist()) + b"\n")
            del canonical
            table = table.drop_columns(list(PRIVATE_COLUMNS))
            path = work / f"{name}-ordered-{k:05d}.arrow"
            writer = ArrowWriter(features=out_features, path=str(path))
            # One record batch per bucket file: opening a file (save_to_disk's Dataset.from_file)
            # reads every batch's header through a memory map, and each read faults in pages
            # around it; 1,000-row batches made that ~80 KB of RSS per 1,000 rows of output.
            writer.write_table(table, writer_batch_size=max(1, table.num_rows))
            _, written = writer.finalize()
            writer.close()
            nbytes += written
            ordered.append(path)
            if exports is not None:
                exports.write(table)
    finally:
        if exports is not None:
            exports.close()
    return WrittenSplit(ordered, rows, digest.hexdigest(), counts.to_json(), nbytes)


def save(out: Path, splits: dict[str, WrittenSplit], style: str) -> None:
    """``DatasetDict.save_to_disk`` of the ordered files (an empty split as one empty shard)."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict, DatasetInfo, concatenate_datasets
    from datasets.table import InMemoryTable

    schema = features(style)
    parts = {}
    for name, split in splits.items():
        if split.files:
            pieces = [Dataset.from_file(str(p)) for p in split.files]
            parts[name] = pieces[0] if len(pieces) == 1 else concatenate_datasets(pieces)
            # Named by content, as the in-memory dataset was: datasets would hash the work files' paths.
            parts[name]._fingerprint = split.content_hash[:16]
            # save_to_disk sizes its shards from Table.nbytes, which on memory-mapped files faults in
            # about half the pages (1.1 GB of RSS for a 2.4 GB split, measured); the size is known.
            parts[name]._estimate_nbytes = lambda nbytes=split.nbytes: nbytes
        else:
            # datasets.load_from_disk fails on a split saved with no shard (IndexError)
            parts[name] = Dataset(InMemoryTable(pa.Table.from_pylist([], schema=schema.arrow_schema)),
                                  info=DatasetInfo(features=schema))
    big = any(split.nbytes > SPAWN_SAVE_BYTES for split in splits.values())
    DatasetDict(parts).save_to_disk(str(out), num_proc=1 if big else None,
                                    num_shards={name: 1 for name, s in splits.items() if not s.files})

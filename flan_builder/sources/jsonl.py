"""A mirror split read once and kept as line offsets: rows are parsed again when taken.

A build over a large mirror should not hold every source row as a Python dict (about 2.5 KB a
row here, 205 MiB for the 81,149 training rows of the shared mirror) nor send them all to every
worker process. ``JsonlLines`` checks every line when the file is indexed (JSON, an object, the
spec's fields), keeps only where each line starts and ends, and pickles as the path and those
offsets; a worker reads the lines its shard needs. The rows of the split most recently read in
bulk stay parsed (one split per process), so the shards of one task parse its file once.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

_parsed_holder: list[JsonlLines] = []  # the one split whose parsed rows are kept


class JsonlLines(Sequence[dict[str, Any]]):
    """The non-empty lines of a JSONL file as rows (parsed on access), by byte offsets."""

    def __init__(self, path: Path, starts: array, ends: array, stamp: tuple[int, int]) -> None:
        self.path = Path(path)
        self.starts, self.ends = starts, ends
        self.stamp = stamp  # (size, mtime_ns) when indexed: a file changed since is an error
        self._fd: tuple[int, int] | None = None  # (pid, fd): a forked process opens its own
        self._parsed: list[dict[str, Any]] | None = None

    @classmethod
    def index(cls, path: Path, task: str, split: str, fields: Sequence[str], spec_path: Path) -> JsonlLines:
        """Read and check every line of ``path`` once; errors name the task, file and line."""
        starts, ends = array("q"), array("q")
        offset = number = 0
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise FlanError(f"task {task}: {path} is not UTF-8 text ({exc.reason}, line {number}); "
                                    "convert it to UTF-8 (e.g. iconv -t utf-8)") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FlanError(f"task {task}: {path}:{number} is not valid JSON "
                                    f"({exc.msg}); fix or remove that line") from None
                if not isinstance(row, dict):
                    raise FlanError(f"task {task}: {path}:{number} is not a JSON object")
                missing = [name for name in fields if name not in row]
                if missing:
                    raise FlanError(f"task {task}: {split} row {len(starts)} of {path} lacks field(s) "
                                    f"{', '.join(missing)} (it has: {', '.join(sorted(row))}); "
                                    f"fix the data or the spec's 'fields' in {spec_path}")
                starts.append(start)
                ends.append(offset)
        stat = path.stat()
        return cls(path, starts, ends, (stat.st_size, stat.st_mtime_ns))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        return self.take([index])[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.take(range(len(self))))

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "starts": self.starts, "ends": self.ends, "stamp": self.stamp}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["starts"], state["ends"], state["stamp"])

    def select(self, indices: Iterable[int]) -> JsonlLines:
        """The rows at ``indices``, as a split of their own (still unparsed)."""
        chosen = list(indices)
        return JsonlLines(self.path, array("q", (self.starts[i] for i in chosen)),
                          array("q", (self.ends[i] for i in chosen)), self.stamp)

    def take(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The rows at ``indices``, parsed, in that order."""
        wanted = [int(i) for i in indices]
        if self._parsed is None and len(wanted) * 8 >= len(self):  # most of the split: read it all
            self._parse_all()
        if self._parsed is not None:
            return [self._parsed[i] for i in wanted]
        return [json.loads(self._read(self.starts[i], self.ends[i])) for i in wanted]

    def _parse_all(self) -> None:
        for other in _parsed_holder:
            other._parsed = None
        _parsed_holder[:] = [self]
        first, last = min(self.starts, default=0), max(self.ends, default=0)
        data = self._read(first, last)
        self._parsed = [json.loads(data[s - first:e - first]) for s, e in zip(self.starts, self.ends,
                                                                              strict=True)]

    def _read(self, start: int, end: int) -> bytes:
        if self._fd is None or self._fd[0] != os.getpid():
            stat = self.path.stat() if self.path.exists() else None
            if stat is None or (stat.st_size, stat.st_mtime_ns) != self.stamp:
                raise FlanError(f"{self.path} changed or went away while the build was reading it; "
                                "leave the mirror alone during a build and run it again")
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return os.pread(self._fd[1], end - start, start)

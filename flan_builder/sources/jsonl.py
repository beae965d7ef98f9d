"""A mirror split read once and kept as line offsets: rows are parsed again when taken.

A build over a large mirror should not hold every source row as a Python dict (about 2.5 KB a
row here, 205 MiB for the 81,149 training rows of the shared mirror) nor send them all to every
worker process. ``JsonlLines`` checks every line when the file is indexed (JSON, an object, the
spec's fields), keeps only where each line starts and ends, and pickles as the path and those
offsets; a worker reads the lines its shard needs. Nothing parsed is kept: a process holding a
whole split parsed would grow with the data (a build over 4.5x the mirror's rows held 4.5x as
much), so ``take`` reads the wanted lines in file order, nearby ones in one read, and parses only
those.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

READ_BYTES = 1 << 20  # wanted lines this close together are read with one pread


class JsonlLines(Sequence[dict[str, Any]]):
    """The non-empty lines of a JSONL file as rows (parsed on access), by byte offsets."""

    def __init__(self, path: Path, starts: array, ends: array, stamp: tuple[int, int]) -> None:
        self.path = Path(path)
        self.starts, self.ends = starts, ends
        self.stamp = stamp  # (size, mtime_ns) when indexed: a file changed since is an error
        self._fd: tuple[int, int] | None = None  # (pid, fd): a forked process opens its own

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
        """The rows at ``indices``, parsed, in that order (each distinct row parsed once)."""
        size = len(self)
        wanted = [int(i) + size if i < 0 else int(i) for i in indices]
        if wanted and not 0 <= min(wanted) <= max(wanted) < size:
            raise IndexError(f"a row index out of range for {self.path} ({size} rows)")
        distinct = sorted(set(wanted), key=self.starts.__getitem__)  # file order (a select() may differ)
        parsed: dict[int, dict[str, Any]] = {}
        first = 0
        while first < len(distinct):
            start = end = self.starts[distinct[first]]
            last = first  # lines distinct[first:last] come from one read of [start, end)
            while last < len(distinct) and (last == first or self.ends[distinct[last]] - start <= READ_BYTES):
                end = max(end, self.ends[distinct[last]])
                last += 1
            data = self._read(start, end)
            for i in distinct[first:last]:
                parsed[i] = json.loads(data[self.starts[i] - start:self.ends[i] - start])
            first = last
        return [parsed[i] for i in wanted]  # a repeated index: the same dict, as a list of rows gives

    def _read(self, start: int, end: int) -> bytes:
        if self._fd is None or self._fd[0] != os.getpid():
            stat = self.path.stat() if self.path.exists() else None
            if stat is None or (stat.st_size, stat.st_mtime_ns) != self.stamp:
                raise FlanError(f"{self.path} changed or went away while the build was reading it; "
                                "leave the mirror alone during a build and run it again")
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return os.pread(self._fd[1], end - start, start)

"""The run lifecycle every long job shares: a hidden work folder and an append-only results log.

A job writing ``OUT`` works in ``.OUT.partial/`` beside it: checkpoints, adapters, and
``results.jsonl``, one JSON line per finished unit of work, so a stopped job started again
skips what is done. The final output appears by rename only when everything is done
(``atomic.atomic_directory``), and the work folder is removed after.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

log = logging.getLogger("flan_builder")


def partial_dir(out: Path) -> Path:
    """Where a job writing ``out`` keeps its unfinished work."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


class ResultsLog:
    """``results.jsonl`` in a work folder: every record so far, and one more appended per call."""

    def __init__(self, work: Path) -> None:
        self.path = Path(work) / "results.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.path.is_file():
            self.records = self._read()

    def _read(self) -> list[dict[str, Any]]:
        """Every complete record. A kill mid-write leaves a torn last line: it is dropped (its
        unit of work runs again) and cut from the file, so the next append starts a clean line."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        records = []
        offset = 0
        for number, line in enumerate(lines, 1):
            end = offset + len(line) + 1
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    if any(rest.strip() for rest in lines[number:]):
                        raise FlanError(f"{self.path}: line {number} is not JSON; the file was edited "
                                        "or damaged: delete it to start this job over") from None
                    log.warning("%s: dropping a torn last line (an interrupted write); that work "
                                "runs again", self.path)
                    with self.path.open("r+b") as handle:
                        handle.truncate(offset)
                    break
            offset = end
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (flushed to disk on return) and keep it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records.append(record)

"""The run lifecycle every long job shares: a hidden work folder and an append-only results log.

A job writing ``OUT`` works in ``.OUT.partial/`` beside it: checkpoints, adapters, and
``results.jsonl``, one JSON line per finished unit of work, so a stopped job started again
skips what is done. The final output appears by rename only when everything is done
(``atomic.atomic_directory``), and the work folder is removed after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
            self.records = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()
                            if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (flushed to disk on return) and keep it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records.append(record)

"""Atomic outputs: build in a hidden temporary sibling, then rename into place.

An interrupted or failed run leaves at most a hidden ``.NAME.tmp-*`` folder, never
something at the output path that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

# A folder holding one of these was written by flan-builder: a build (manifest.json), a
# training run (run.json), a report (results.json: eval, lift, llm2llm), a saved model, an
# LLM2LLM iteration (record.json).
OUTPUT_MARKERS = ("manifest.json", "run.json", "results.json", "flan-model-cache.json", "record.json")


def _is_flan_output(path: Path) -> bool:
    return path.is_dir() and (any((path / name).is_file() for name in OUTPUT_MARKERS)
                              or not any(path.iterdir()))


def check_output_free(out: Path, overwrite: bool) -> None:
    """Fail early, before any work, when the output exists and may not be replaced; remove what
    killed runs of the same output left beside it.

    ``--overwrite`` deletes only what flan-builder wrote (or an empty folder): a typo such as
    ``--out .`` or ``--out ~/data`` must not remove a user's files.
    """
    out = Path(out)
    remove_leftovers(out)
    if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve()):
        raise FlanError(f"--out {out} is the current folder, one above it or the home folder; "
                        "name a new folder for the output")
    if not out.exists():
        return
    if not overwrite:
        raise FlanError(f"output directory {out} already exists; pass --overwrite to replace it "
                        "or choose another --out")
    if not _is_flan_output(out):
        what = "a file" if not out.is_dir() else f"a folder without {', '.join(OUTPUT_MARKERS[:3])}"
        raise FlanError(f"--overwrite refuses to delete {out}: it is {what}, not a flan-builder "
                        "output; remove it yourself or choose another --out")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(out: Path) -> list[Path]:
    """Remove what killed runs of ``out`` left beside it (hidden ``.NAME.tmp-PID-*`` and
    ``.NAME.old-*`` folders); a live process's temporary folder is left alone."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.glob(f".{out.name}.tmp-*"):
        pid = path.name[len(f".{out.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    for path in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextmanager
def atomic_directory(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds."""
    out = Path(out)
    check_output_free(out, overwrite)  # also removes what killed runs left
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")

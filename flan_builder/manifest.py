"""Manifests: what was run, with what, and a content hash that identifies the result."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

MANIFEST_NAME = "manifest.json"
_PACKAGES = ("flan-builder", "datasets", "jinja2", "pyarrow", "huggingface_hub", "pyyaml")


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python and the packages that shape the output."""
    versions = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical_json(obj: Any) -> str:
    """One stable text form per value: sorted keys, no spacing choices, UTF-8 kept."""
    return _CANONICAL.encode(obj)


def row_hash(row: dict[str, Any]) -> str:
    """Short stable hash of a source row's content (used to prove held-out rows stay out)."""
    return hashlib.sha1(canonical_json(row).encode("utf-8")).hexdigest()[:16]


def content_hash(rows: Iterable[dict[str, Any]]) -> str:
    """SHA-256 over the canonical JSON of every row, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(row).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def command_line() -> str:
    """The command that made an output, with secrets (``--set sft.x_token=...``) redacted."""
    from flan_builder.redaction import redact_argv

    argv = redact_argv(list(sys.argv))
    return " ".join(["flan", *argv[1:]]) if argv and argv[0].endswith("flan") else " ".join(argv)

def read_dataset_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a built dataset directory (an error that says how to build one)."""
    path = Path(path)
    if not path.is_dir():
        raise FlanError(f"dataset directory {path} not found; build it with `flan build --heldout "
                        f"CLUSTER --out {path}` or give the recipe a dataset.build section")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FlanError(f"{path} is not a complete flan-builder dataset (no {MANIFEST_NAME}); "
                        "rebuild it with `flan build`")
    return json.loads(manifest_path.read_text(encoding="utf-8"))

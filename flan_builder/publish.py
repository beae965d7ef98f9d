"""Publishing a built dataset to the Hub: card and manifest first, then the data.

``DatasetDict.push_to_hub`` merges its ``dataset_info`` into an existing README, so the
card goes up first and keeps its header and body. The token comes only from the
environment and never appears in output.
"""

from __future__ import annotations

import os
from pathlib import Path

from flan_builder.card import render_card
from flan_builder.errors import FlanError
from flan_builder.manifest import MANIFEST_NAME
from flan_builder.specs import Registry, load_registry

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> str:
    """The Hub token from the environment (never from the command line, never printed)."""
    for name in TOKEN_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    raise FlanError(f"no Hub token: set {TOKEN_ENV_VARS[0]} in the environment to publish")


def read_manifest(dataset_dir: Path) -> dict:
    import json

    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FlanError(f"{dataset_dir} is not a built dataset (no {MANIFEST_NAME}); "
                        "run `flan build` first")
    return json.loads(path.read_text(encoding="utf-8"))


def stage(dataset_dir: Path, staging: Path, registry: Registry | None = None) -> list[Path]:
    """Write the files we upload ourselves (README.md card, manifest.json) into ``staging``."""
    manifest = read_manifest(dataset_dir)
    registry = registry or load_registry()
    staging.mkdir(parents=True, exist_ok=True)
    card = staging / "README.md"
    card.write_text(render_card(manifest, registry), encoding="utf-8")
    copied = staging / MANIFEST_NAME
    copied.write_bytes((Path(dataset_dir) / MANIFEST_NAME).read_bytes())
    return [card, copied]


def push(dataset_dir: Path, repo_id: str, *, public: bool = False,
         registry: Registry | None = None) -> str:
    """Publish ``dataset_dir`` to ``repo_id`` (private unless ``public``); returns the URL."""
    import tempfile

    from datasets import load_from_disk
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1:
        raise FlanError(f"--push-to-hub wants USER/NAME, got {repo_id!r}")
    token = hub_token()
    dataset = load_from_disk(str(dataset_dir))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=not public, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for path in stage(Path(dataset_dir), Path(tmp), registry):
                api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name,
                                repo_id=repo_id, repo_type="dataset",
                                commit_message=f"flan-builder: {path.name}")
        dataset.push_to_hub(repo_id, private=not public, token=token,
                            commit_message="flan-builder: data")
    except FlanError:
        raise
    except Exception as exc:  # network and auth errors come in many types
        message = str(exc).replace(token, "***").strip().splitlines()
        raise FlanError(f"publishing to {repo_id} failed: {message[0] if message else type(exc).__name__}"
                        ) from None
    return str(url)

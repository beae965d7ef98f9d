"""Helpers shared by the tests: paths to the real data and the fixtures, spec / row writers,
a tiny model configuration, a small training recipe, and the one-line-error check."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_TEMPLATES = FIXTURES / "templates"
FIXTURE_DATA = FIXTURES / "data"
SHARED_DATA = Path(os.environ.get("FLAN_SHARED_DATA", REPO.parent / "shared" / "data"))

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.json").is_file(),
    reason=f"real datasets not found at {SHARED_DATA} (set FLAN_SHARED_DATA)",
)


def write_spec(root: Path, cluster: str, name: str, text: str) -> Path:
    """Write a hand-made spec file under ``root/cluster/name.yaml``."""
    path = root / cluster / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_rows(root: Path, mirror: str, split: str, rows: list[dict]) -> Path:
    """Write a hand-made mirror split ``root/mirror/split.jsonl``."""
    path = root / mirror / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_choice_spec(root: Path, name: str, template_id: str, template: str) -> Path:
    """A multiple-choice spec ``root/qa/NAME.yaml`` (fields text, choices, label) with a plain
    template ``fine`` and ``template_id`` holding ``template`` (which may span lines)."""
    indented = "\n".join("      " + line for line in template.splitlines())
    return write_spec(root, "qa", name, f"""
task: {name}
cluster: qa
type: multiple_choice
source: {{hub_id: x/{name}, mirror: {name}, splits: {{train: train}}}}
fields: [text, choices, label]
options: choices
answer: label
templates:
  - id: fine
    input: "{{{{ text }}}}"
  - id: {template_id}
    input: |-
{indented}
""")


HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
KV_DIM = KV_HEADS * HEAD_DIM


def tiny_config(vocab: int, layers: int = LAYERS):
    """A 2-layer Llama small enough to train in seconds on a CPU."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTER,
                       num_hidden_layers=layers, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, max_position_embeddings=512)


def make_recipe(tmp_path: Path, model: Path, dataset: Path, name: str = "run", **sections) -> Path:
    """A small training recipe file (4 LoRA steps) for a tiny model on a built dataset."""
    data = {
        "model": str(model), "heldout": "nli", "output": str(tmp_path / name),
        "dataset": {"path": str(dataset)},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "num_virtual_tokens": 5, "encoder_hidden_size": 16},
        "sft": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
                "logging_steps": 1, "save_steps": 2, "max_length": 96, "disable_tqdm": True,
                "dataloader_num_workers": 0},
        # fp32 whatever the CPU: the tests that compare runs hold fp32 tolerances on any machine
        "train": {"precision": "fp32"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def train_recipe(recipe_path: Path, overrides=(), **kwargs):
    """Run ``flan train`` on a recipe file in-process."""
    from flan_builder.training.job import train
    from flan_builder.training.recipe import load_recipe

    return train(load_recipe(recipe_path, list(overrides)), **kwargs)


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    """Exit code 2, one line on stderr naming every part, no traceback."""
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])


FAKE_GGUF = "tiny.Q4_0.gguf"


def add_fake_alias(monkeypatch, root: Path, name: str = "tiny-alias", *, chunked: bool = False,
                   license=None):
    """Register a model alias whose package is a folder under ``root`` (put on sys.path): the
    GGUF placeholder ships in it, or (``chunked``) its ``assemble(output_path=)`` writes one.
    Loading needs ``models.save_gguf_as_folder`` patched too: the placeholder is no real GGUF."""
    import uuid

    from flan_builder import models

    package = f"fake_model_{uuid.uuid4().hex[:8]}"  # unique: no stale sys.modules entry
    folder = root / package
    folder.mkdir(parents=True)
    if chunked:
        (folder / "__init__.py").write_text(
            "from pathlib import Path\n\n\ndef assemble(output_path):\n"
            "    Path(output_path).write_bytes(b'GGUF assembled')\n    return Path(output_path)\n")
    else:
        (folder / "__init__.py").write_text("")
        (folder / FAKE_GGUF).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(root))
    alias = models.PackagedGGUF(
        package=package, distribution=package.replace("_", "-"), filename=FAKE_GGUF,
        install=f"pip install {package}", upstream=f"example/{name}",
        license=license or models.APACHE_2, about="a test stand-in",
        assembler="assemble" if chunked else None)
    monkeypatch.setitem(models.ALIASES, name, alias)
    return alias


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

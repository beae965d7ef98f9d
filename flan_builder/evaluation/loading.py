"""Models for evaluation: aliases, GGUF files, Hub ids, and trained runs.

A run directory from ``flan train`` carries ``run.json``, which names its base model: the
adapter is loaded onto that base automatically (LoRA and IA3 merged into the weights, so
scoring runs at the base model's speed; virtual-token adapters stay PEFT models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.models import ModelSource, load_model, load_tokenizer, resolve_model


def _base_of_run(folder: Path) -> ModelSource | None:
    run = folder / "run.json"
    if run.is_file():
        source = json.loads(run.read_text(encoding="utf-8"))["model_source"]
        return ModelSource(source["name"], source["kind"], source["location"], source.get("gguf_file"))
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise FlanError(f"{folder}: adapter_config.json names no base model")
        return resolve_model(base)
    return None


def check_model(name: str) -> None:
    """Fail before any work when a model cannot be found (loading comes later, one at a time)."""
    folder = Path(name)
    if not (folder.is_dir() and _base_of_run(folder) is not None):
        resolve_model(name)


def load_for_eval(name: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, description) for a model name or a run directory."""
    import torch

    folder = Path(name)
    base = _base_of_run(folder) if folder.is_dir() else None
    info: dict[str, Any] = {"name": name}
    if base is None:
        source = resolve_model(name)
        model, tokenizer = load_model(source, dtype=torch.float32), load_tokenizer(source)
        info.update(kind=source.kind, source=source.describe(), method=None)
    elif (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        model = load_model(base, dtype=torch.float32)
        tokenizer = load_tokenizer(base)
        try:
            model = PeftModel.from_pretrained(model, str(folder))
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's input
            raise FlanError(f"could not load the adapter in {folder} onto {base.name}: "
                            f"{str(exc).splitlines()[0]}") from None
        method = model.peft_config["default"].peft_type.value.lower()
        if not model.peft_config["default"].is_prompt_learning:
            model = model.merge_and_unload()  # same outputs, base-model speed
        info.update(kind="adapter", source=f"{folder} on {base.describe()}", method=method)
    else:  # a full fine-tune: a whole model directory
        source = resolve_model(str(folder))
        model, tokenizer = load_model(source, dtype=torch.float32), load_tokenizer(source)
        info.update(kind="run", source=str(folder), method="full")
    model.eval()
    return model, tokenizer, info

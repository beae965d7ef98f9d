"""Each tuning method's hyper-parameters as its paper set them, and a comparison recipe's ``compare:``.

What a method's paper chose (learning rate, optimiser, weight decay, the adapter's shape) is laid
over the recipe; what makes the comparison fair (steps, batch size, sequence length, schedule,
seed, data) stays the recipe's, the same for every method. A recipe's ``compare.settings`` (or
``--set compare.settings.lora.sft.learning_rate=1e-4``) overrides a paper's value. Nothing here
imports torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.training.recipe import (
    PEFT_METHODS,
    Recipe,
    apply_overrides,
    check_section,
    one_of,
    read_recipe_file,
    validate_recipe,
)

# method -> (settings laid over the recipe's peft: and sft:, where they come from)
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "sft": {"learning_rate": 3.0e-5},
        "source": "FLAN (Wei et al., 2021) tuned every weight at 3e-5 (with Adafactor; AdamW here)",
    },
    "lora": {
        "peft": {"r": 4, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "sft": {"learning_rate": 2.0e-4, "weight_decay": 0.01},
        "source": "LoRA (Hu et al., 2021), GPT-2 on E2E (their Table 11): rank 4 on W_q and W_v, "
                  "alpha 32, dropout 0.1, AdamW 2e-4, weight decay 0.01",
    },
    "ia3": {
        "sft": {"learning_rate": 3.0e-3, "optim": "adafactor"},
        "source": "(IA)3 (Liu et al., 2022, T-Few): keys, values and the feed-forward input rescaled; "
                  "Adafactor 3e-3 (t-few configs/ia3.json)",
    },
    "prompt_tuning": {
        "peft": {"num_virtual_tokens": 100},
        "sft": {"learning_rate": 0.3, "optim": "adafactor", "weight_decay": 1.0e-5},
        "source": "Prompt tuning (Lester et al., 2021): 100 soft tokens, Adafactor 0.3 without parameter "
                  "scaling, weight decay 1e-5 (their best init was class labels; PEFT's random init here)",
    },
    "prefix_tuning": {
        "peft": {"num_virtual_tokens": 128, "prefix_projection": False},
        "sft": {"learning_rate": 5.0e-3},
        "source": "P-tuning v2 (Liu et al., 2022), its RTE script: a 128-position key/value prefix in "
                  "every layer, no reparameterisation, AdamW 5e-3 (Li & Liang's original: 10 positions "
                  "through a 512-wide MLP at 5e-5)",
    },
    "p_tuning": {
        "peft": {"num_virtual_tokens": 9},
        "sft": {"learning_rate": 1.0e-5, "weight_decay": 5.0e-4},
        "source": "P-tuning (Liu et al., 2021, GPT Understands, Too), LAMA with the LM frozen: 9 prompt "
                  "tokens (template 3,3,3) through a prompt encoder, Adam 1e-5, weight decay 5e-4 (their "
                  "LSTM encoder; PEFT's MLP here)",
    },
}
assert set(PAPER_SETTINGS) == set(PEFT_METHODS)

# The same for every method, whatever the recipe says: the same batches (padding-free batches are
# not possible for virtual-token methods), no merged copy, and a NaN loss that shows in the log
# (transformers otherwise logs the window's mean of the finite losses in its place).
COMMON_SETTINGS: dict[str, dict[str, Any]] = {
    "train": {"padding_free": False, "merge": False},
    "sft": {"logging_nan_inf_filter": False},
}

DEFAULT_SHOTS = [0, 1, 4]
_COMPARE = {
    "methods": ((list,), None, list(PEFT_METHODS)),
    "settings": ((dict,), None, {}),
    "eval": ((dict,), None, {}),
}
_EVAL = {
    "limit": ((int, type(None)), None, 30),  # rows per held-out dataset
    "templates": ((int, type(None)), None, None),  # first K templates per dataset (None: all)
    "template": ((list,), None, []),
    "tasks": ((list,), None, []),
    "shots": ((list,), None, DEFAULT_SHOTS),  # in-context learning of the untuned base: k exemplars
    "shots_from": ((str,), one_of("mixture", "task"), "mixture"),
    "batch_size": ((int, str), None, "auto"),
}


@dataclass
class Comparison:
    """A comparison recipe: one training recipe per method, and how every model is evaluated."""

    base: Recipe  # the recipe as written (its own peft method), for model, data and output
    recipes: dict[str, Recipe]  # method -> its recipe (output: <output>/runs/<method>)
    raw: dict[str, dict[str, Any]]  # method -> the recipe mapping `flan train` reads
    settings: dict[str, dict[str, Any]]  # method -> the paper settings laid over it, and their source
    eval: dict[str, Any]
    source: str
    overrides: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return list(self.recipes)


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _check_eval(data: Any, source: str) -> dict[str, Any]:
    settings = check_section(data, _EVAL, "compare.eval", source)
    shots = settings["shots"]
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in shots):
        raise FlanError(f"{source}: compare.eval.shots must be whole numbers >= 0 (e.g. [0, 1, 4]), "
                        f"got {shots!r}")
    settings["shots"] = sorted(set(shots))
    for key in ("limit", "templates"):
        if settings[key] is not None and settings[key] < 1:
            raise FlanError(f"{source}: compare.eval.{key} must be at least 1 (or null for all), "
                            f"got {settings[key]}")
    return settings


def load_comparison(path: Any, overrides: list[str] | None = None,
                    methods: list[str] | None = None) -> Comparison:
    """A comparison recipe (a training recipe with a ``compare:`` section, or any training recipe, which
    compares every method), with ``--set`` overrides and an optional list of methods."""
    overrides = list(overrides or [])
    source = str(path)
    data = apply_overrides(read_recipe_file(path), overrides)
    if "compare" not in data and not any(o.split("=", 1)[0].strip() == "output" for o in overrides):
        # a plain training recipe: its output is one run's folder, so the comparison goes beside it
        data["output"] = f"{data.get('output')}-compare"
    section = check_section(data.pop("compare", None) or {}, _COMPARE, "compare", source)
    base = validate_recipe(data, source, overrides)
    chosen = list(methods) if methods else [str(m) for m in section["methods"]]
    unknown = [m for m in chosen if m not in PEFT_METHODS]
    if unknown or not chosen:
        raise FlanError(f"{source}: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                        f"{', '.join(PEFT_METHODS)}")
    if len(set(chosen)) != len(chosen):
        raise FlanError(f"{source}: a method is listed twice in {', '.join(chosen)}")
    extra = sorted(set(section["settings"]) - set(PEFT_METHODS))
    if extra:
        raise FlanError(f"{source}: compare.settings names unknown method(s) {', '.join(extra)}; "
                        f"known: {', '.join(PEFT_METHODS)}")
    if base.train["init"] != "pretrained":
        raise FlanError(f"{source}: a comparison tunes the pretrained model; remove train.init")
    out = base.output
    recipes, raw, settings = {}, {}, {}
    for method in chosen:
        paper = copy.deepcopy(PAPER_SETTINGS[method])
        mine = section["settings"].get(method) or {}
        if not isinstance(mine, dict) or set(mine) - {"peft", "sft"}:
            raise FlanError(f"{source}: compare.settings.{method} takes peft: and sft: mappings, "
                            f"got {mine!r}")
        layered = {"peft": {}, "sft": {}}
        _merge(layered, {k: v for k, v in paper.items() if k in ("peft", "sft")})
        _merge(layered, mine)
        mapping = copy.deepcopy(data)
        mapping["name"] = f"{base.name}-{method}"
        mapping["output"] = f"{out}/runs/{method}"
        mapping.setdefault("peft", {})
        mapping.setdefault("sft", {})
        _merge(mapping, layered)
        _merge(mapping, COMMON_SETTINGS)
        mapping["peft"]["method"] = method
        recipes[method] = validate_recipe(mapping, f"{source} (method {method})", overrides)
        raw[method] = mapping
        settings[method] = {**layered, "source": paper["source"] + ("; changed here: " + str(mine)
                                                                    if mine else "")}
    return Comparison(base, recipes, raw, settings, _check_eval(section["eval"], source), source, overrides)


def hyperparameters(recipe: Recipe) -> dict[str, Any]:
    """What a method trained with, for the report: optimiser settings and the adapter's shape."""
    sft, peft = recipe.sft, recipe.peft
    shown: dict[str, Any] = {"learning_rate": sft.get("learning_rate"),
                             "optim": sft.get("optim") or "adamw (the trainer's default)",
                             "weight_decay": sft.get("weight_decay", 0.0)}
    method = recipe.method
    if method == "lora":
        shown.update({k: peft[k] for k in ("r", "alpha", "dropout", "target_modules")})
    elif method in ("prompt_tuning", "p_tuning", "prefix_tuning"):
        shown["num_virtual_tokens"] = peft["num_virtual_tokens"]
        if method == "p_tuning" or (method == "prefix_tuning" and peft["prefix_projection"]):
            shown["encoder_hidden_size"] = peft["encoder_hidden_size"]
        if method == "prefix_tuning":
            shown["prefix_projection"] = peft["prefix_projection"]
        if method == "prompt_tuning" and peft.get("prompt_init_text"):
            shown["prompt_init_text"] = peft["prompt_init_text"]
    elif method == "ia3":
        shown["target_modules"] = peft.get("ia3_target_modules") or "k_proj, v_proj, down_proj (input)"
    return shown

"""The PEFT family: one ``peft`` config per method name, and trainable-parameter counts.

``full`` is no adapter at all (every weight trains). The virtual-token methods
(prompt tuning, prefix tuning / P-tuning v2, P-tuning's prompt encoder) prepend learned
tokens or key/value prefixes to every sequence; ``recipe.py`` keeps them away from the
batchings that would share one prefix between examples.
"""

from __future__ import annotations

from typing import Any

from flan_builder.errors import FlanError
from flan_builder.training.recipe import PEFT_METHODS


def _ia3_modules(model: Any, settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """IA3's defaults for Llama-like models: rescale keys, values and the MLP input of down_proj."""
    targets = settings.get("ia3_target_modules")
    feedforward = settings.get("ia3_feedforward_modules")
    if targets is None:
        if model is None:  # `flan train --check`: no model loaded; peft's defaults stand in
            return [], []
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [n for n in ("k_proj", "v_proj", "down_proj") if n in names]
        if not targets:
            return [], []  # let peft pick its own per-architecture defaults
        feedforward = [n for n in ("down_proj",) if n in targets] if feedforward is None else feedforward
    return list(targets), list(feedforward or [])


def make_peft_config(settings: dict[str, Any], model: Any) -> Any:
    """The ``peft`` config for the recipe's ``peft:`` section, or None for ``full``."""
    try:
        return _peft_config(settings, model)
    except (ValueError, TypeError) as exc:  # peft validates its own values (r, dropout, ...)
        raise FlanError(f"bad peft settings for {settings['method']}: {str(exc).splitlines()[0]}") from None


def _peft_config(settings: dict[str, Any], model: Any) -> Any:
    import peft

    method = settings["method"]
    if method not in PEFT_METHODS:
        raise FlanError(f"unknown PEFT method {method!r}; choose one of {', '.join(PEFT_METHODS)}")
    if method == "full":
        return None
    task = peft.TaskType.CAUSAL_LM
    if method == "lora":
        return peft.LoraConfig(
            task_type=task, r=settings["r"], lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"], target_modules=settings["target_modules"],
        )
    if method == "prompt_tuning":
        text = settings.get("prompt_init_text")
        if text:
            return peft.PromptTuningConfig(
                task_type=task, num_virtual_tokens=settings["num_virtual_tokens"],
                prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=text,
                tokenizer_name_or_path=getattr(model, "name_or_path", None),
            )
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=settings["num_virtual_tokens"])
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=settings["num_virtual_tokens"],
            prefix_projection=settings["prefix_projection"],
            encoder_hidden_size=settings["encoder_hidden_size"],
        )
    if method == "p_tuning":
        return peft.PromptEncoderConfig(
            task_type=task, num_virtual_tokens=settings["num_virtual_tokens"],
            encoder_hidden_size=settings["encoder_hidden_size"],
        )
    targets, feedforward = _ia3_modules(model, settings)
    if targets:
        return peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=feedforward)
    return peft.IA3Config(task_type=task)


def parameter_counts(model: Any) -> dict[str, Any]:
    """Trainable and total parameters (a PEFT model counts its frozen base and its adapter)."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    if hasattr(model, "get_nb_trainable_parameters"):
        # peft's own count also covers prompt encoders that are not module parameters
        trainable, total = model.get_nb_trainable_parameters()
    return {"trainable": int(trainable), "total": int(total),
            "fraction": trainable / total if total else 0.0}

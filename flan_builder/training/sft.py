"""TRL's SFTTrainer with two changes that matter on small models and CPUs.

* Compact LM head: completion-only loss needs next-token log-probabilities only where the
  label is not -100, yet TRL projects every position through the LM head unless Triton
  is available. For a 135M model with a 49k vocabulary the LM head is a fifth of the
  forward, and prompts are most of each sequence. We project only the scored positions,
  on every device.
* A progress bar that shows loss and tokens/s instead of printing a dict per log step.

Everything else (tokenization, completion masks, collators, checkpoints, resume) is
TRL's and transformers' own.
"""

from __future__ import annotations

import time
import types
from typing import Any

import torch
from transformers.trainer_callback import ProgressCallback
from trl import SFTTrainer
from trl.trainer.utils import FusedCausalLMOutput

from flan_builder.lm.scoring import cache_keyword


def _supports_compact_head(model: Any) -> bool:
    config = model.config.get_text_config()
    scaled = any(getattr(config, name, None) not in (None, 1.0) for name in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling"))
    head = model.get_output_embeddings()
    return not scaled and head is not None and hasattr(head, "weight")


def install_compact_lm_head(model: Any) -> bool:
    """Patch ``model`` so that ``fused_lm_head=True`` scores only labelled positions.

    Returns False (and leaves TRL's head in place) for models whose logits are scaled or
    soft-capped, which this head does not reproduce.
    """
    if not _supports_compact_head(model):
        return False
    fused_forward = model.forward  # TRL's patched forward; it runs the model's own without the flag

    def compact_forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None,
                        shift_labels: Any = None, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head:
            return fused_forward(*args, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        if "past_key_values" in kwargs:  # PEFT's prefix tuning hands its prefix over under the old name
            kwargs[cache_keyword(self.base_model)] = kwargs.pop("past_key_values")
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        labels = labels.to(head.weight.device)
        mask = labels != -100
        targets = labels[mask]
        logits = head(hidden.to(head.weight.device)[mask]).float()
        log_softmax = logits.log_softmax(-1)
        picked = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            is_top1 = (logits.argmax(-1) == targets).to(logits.dtype)

        def spread(values: torch.Tensor) -> torch.Tensor:
            # masked_scatter keeps an all-masked batch connected to the graph (a zero loss, not an error)
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = spread(picked)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count, log_probs=log_probs, entropy=spread(entropy),
            is_top1=spread(is_top1), label_mask=mask,
        )

    model.forward = types.MethodType(compact_forward, model)
    return True


class FlanSFTTrainer(SFTTrainer):
    """SFTTrainer plus the compact LM head (``compact_lm_head=False`` keeps TRL's)."""

    def __init__(self, *args: Any, compact_lm_head: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.compact_lm_head = compact_lm_head and install_compact_lm_head(base)

    @property
    def tokens_seen(self) -> int:
        return int(self._total_train_tokens)


class LossProgressCallback(ProgressCallback):
    """The training bar with loss and tokens/s as its postfix (no dict printed per log)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[float, float] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        postfix: dict[str, str] = {}
        if "loss" in logs:
            postfix["loss"] = f"{logs['loss']:.4f}"
        if "num_tokens" in logs:
            now, tokens = time.perf_counter(), float(logs["num_tokens"])
            if self._last is not None and now > self._last[0]:
                postfix["tok/s"] = f"{(tokens - self._last[1]) / (now - self._last[0]):.0f}"
            self._last = (now, tokens)
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=False)

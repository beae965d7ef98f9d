"""TRL's SFTTrainer with two changes that matter on small models and CPUs.

* Compact LM head: completion-only loss needs next-token log-probabilities only where the
  label is not -100, yet TRL projects every position through the LM head unless Triton
  is available. For a 135M model with a 49k vocabulary the LM head is a fifth of the
  forward, and prompts are most of each sequence. We project only the scored positions,
  on every device, a chunk of them at a time (``chunked_head``).
* A progress bar that shows loss and tokens/s instead of printing a dict per log step.
* Freed memory handed back after each optimizer step (``release_memory``): glibc's malloc
  keeps what PyTorch frees, and micro-batches of different lengths fragment it.
* Run totals that survive a resume: transformers and TRL count tokens seen and the loss sum
  for the current process only, so a resumed run would report its last segment. Each
  checkpoint records the totals so far (``flan_totals.json``) and a resumed run adds to them.

Everything else (tokenization, completion masks, collators, checkpoints, resume) is
TRL's and transformers' own.
"""

from __future__ import annotations

import ctypes
import json
import time
import types
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import ProgressCallback, TrainerCallback
from trl import SFTTrainer
from trl.trainer.utils import FusedCausalLMOutput

from flan_builder.lm.scoring import cache_keyword
from flan_builder.training.chunked_head import completion_log_probs, whole_log_probs


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
        selected = hidden.to(head.weight.device)[mask]
        if type(head) is torch.nn.Linear:  # a chunk of positions at a time: never all the logits
            picked, entropy, is_top1 = completion_log_probs(selected, head, targets)
        else:  # a wrapped head (an adapter on the LM head itself): through its own forward
            picked, entropy, is_top1 = whole_log_probs(head(selected), targets)

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

    def __init__(self, *args: Any, compact_lm_head: bool = True, release_memory: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        trim = malloc_trim() if release_memory else None
        if trim is not None:
            self.add_callback(_ReleaseFreedMemory(trim))
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.compact_lm_head = compact_lm_head and install_compact_lm_head(base)

        self.resumed_totals = {"step": 0, "tokens_seen": 0, "loss_sum": 0.0}  # a checkpoint's, on resume
        self.add_callback(_SaveRunTotals(self))

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on over the whole run, earlier segments of a resumed run included."""
        return self.resumed_totals["tokens_seen"] + int(self._total_train_tokens)

    def loss_sum(self) -> float:
        """The sum of per-step training losses so far in the whole run (transformers' own
        running sum covers this process's steps only)."""
        return self.resumed_totals["loss_sum"] + self._total_loss_scalar + float(self._tr_loss.item())

    def resume_totals_from(self, checkpoint: Path) -> None:
        self.resumed_totals = read_run_totals(checkpoint)


TOTALS_FILE = "flan_totals.json"


def read_run_totals(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / TOTALS_FILE).read_text(encoding="utf-8"))


class _SaveRunTotals(TrainerCallback):
    """Write the run's totals into each checkpoint right after transformers saved it."""

    def __init__(self, trainer: FlanSFTTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            totals = {"step": state.global_step, "tokens_seen": self.trainer.tokens_seen,
                      "loss_sum": self.trainer.loss_sum()}
            tmp = folder / f".{TOTALS_FILE}.tmp"
            tmp.write_text(json.dumps(totals), encoding="utf-8")
            tmp.replace(folder / TOTALS_FILE)


def malloc_trim() -> Any | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc (macOS, musl).

    Looked up among the symbols this process already has loaded (``CDLL(None)``), not with
    ``ctypes.util.find_library``, which runs ``ldconfig`` in a subprocess."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


class _ReleaseFreedMemory(TrainerCallback):
    """After each optimizer step, return the pages malloc holds free to the system.

    Between steps almost nothing PyTorch allocated is live (the activations are gone), yet
    glibc keeps their pages: measured on the heaviest micro-batches of the README's nli run,
    1.1 GiB kept free against 0.23 GiB in use. Trimming then costs a page fault per page
    touched again in the next step, not a system call per allocation as a low
    ``mmap_threshold`` would.
    """

    def __init__(self, trim: Any) -> None:
        self.trim = trim

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trim(0)


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

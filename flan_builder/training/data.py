"""The training split of a built dataset, checked and tokenized for completion-only loss.

Checks come first (held-out cluster in the manifest, no training row from a held-out
or blocked cluster). Prompt-completion rows are tokenized here into TRL's processed
format (``input_ids`` + ``completion_mask``), truncated to ``max_length`` keeping the
start, and rows whose completion was truncated away entirely are dropped and counted:
they would contribute no loss, only time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.manifest import read_dataset_manifest


@dataclass
class TrainingData:
    dataset: Any  # datasets.Dataset: prompt/completion, or input_ids/completion_mask
    manifest: dict[str, Any]
    style: str
    rows: int  # rows in the built training split
    dropped_truncated: int = 0  # completion truncated away entirely: dropped
    truncated: int = 0  # completion cut short but kept
    tokens: int = 0  # tokens per epoch after truncation



def check_heldout(manifest: dict[str, Any], heldout: str, path: Path, train_split: Any) -> None:
    """Refuse to train when the dataset's held-out cluster differs from the recipe's, or leaks."""
    built = manifest.get("heldout_cluster") or "none"
    if built != heldout:
        raise FlanError(f"held-out mismatch: the recipe holds out {heldout!r} but {path} was built "
                        f"with --heldout {built}; rebuild the dataset or fix the recipe's heldout")
    plan = manifest.get("split_plan", {})
    forbidden_clusters = ({heldout} | set(plan.get("blocked_clusters", []))) - {"none"}
    forbidden_tasks = set(plan.get("heldout_tasks", [])) | set(plan.get("excluded_from_train", []))
    clusters = set(train_split.unique("cluster")) if len(train_split) else set()
    tasks = set(train_split.unique("task")) if len(train_split) else set()
    bad = sorted((clusters & forbidden_clusters) | (tasks & forbidden_tasks))
    if bad:
        raise FlanError(f"{path}: the training split has rows from the held-out side ({', '.join(bad)}); "
                        "it would not measure zero-shot performance. Rebuild it with `flan build`")


def tokenize_prompt_completion(split: Any, tokenizer: Any, max_length: int | None,
                               num_proc: int | None = None) -> tuple[Any, dict[str, int]]:
    """TRL's processed format: prompt+completion+EOS ids and a completion mask, truncated."""
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        prompts = tokenizer(batch["prompt"])["input_ids"]
        joined = [p + c for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
        full = tokenizer(joined)["input_ids"]
        ids, masks, kept, cut = [], [], [], []
        for prompt_ids, full_ids in zip(prompts, full, strict=True):
            if eos is not None and (not full_ids or full_ids[-1] != eos):
                full_ids = [*full_ids, eos]
            mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
            whole = len(full_ids)
            if max_length is not None and whole > max_length:
                full_ids, mask = full_ids[:max_length], mask[:max_length]
            ids.append(full_ids)
            masks.append(mask)
            kept.append(any(mask))
            cut.append(len(full_ids) < whole)
        return {"input_ids": ids, "completion_mask": masks, "_kept": kept, "_cut": cut}

    tokenized = split.map(encode, batched=True, batch_size=1000, remove_columns=split.column_names,
                          num_proc=num_proc, desc="tokenizing")
    kept_flags = tokenized["_kept"]
    cut_flags = tokenized["_cut"]
    dropped = kept_flags.count(False)
    truncated = sum(1 for keep, cut in zip(kept_flags, cut_flags, strict=True) if keep and cut)
    if dropped:
        tokenized = tokenized.filter(lambda keep: keep, input_columns="_kept", num_proc=num_proc)
    tokenized = tokenized.remove_columns(["_kept", "_cut"])
    tokens = sum(len(ids) for ids in tokenized["input_ids"])
    return tokenized, {"dropped_truncated": dropped, "truncated": truncated, "tokens": tokens}


def load_training_data(path: Path, heldout: str, tokenizer: Any, max_length: int | None) -> TrainingData:
    """Load, check and (for prompt-completion) tokenize the built training split."""
    from datasets import load_from_disk

    from flan_builder.progress import quiet_datasets_unless_terminal

    quiet_datasets_unless_terminal()
    manifest = read_dataset_manifest(path)
    dataset = load_from_disk(str(path))
    if "train" not in dataset:
        raise FlanError(f"{path} has no train split; rebuild it with `flan build`")
    split = dataset["train"]
    if len(split) == 0:
        raise FlanError(f"{path}: the train split is empty; nothing to train on")
    check_heldout(manifest, heldout, Path(path), split)
    style = manifest.get("style", "prompt_completion")
    rows = len(split)
    split = split.select_columns(["prompt", "completion"])
    if style == "messages":
        if getattr(tokenizer, "chat_template", None) is None:  # TRL would raise a ValueError mid-setup
            raise FlanError(f"{path} was built --as messages, but the model's tokenizer has no chat "
                            "template (a base model such as gemma3-270m); rebuild the dataset without "
                            "--as messages, or train a model that has one")
        # TRL applies the model's chat template and truncates; the trainer counts its drops.
        return TrainingData(split, manifest, style, rows)
    tokenized, stats = tokenize_prompt_completion(split, tokenizer, max_length)
    if len(tokenized) == 0:
        raise FlanError(f"{path}: every row's completion lies beyond sft.max_length={max_length}; "
                        "raise max_length")
    return TrainingData(tokenized, manifest, style, rows, **stats)

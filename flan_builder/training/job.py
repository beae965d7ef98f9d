"""``flan train``: a recipe -> a tuned adapter (or model) with its run manifest.

Layout while running: ``<output>.partial/`` (hidden, beside the output) holds the
checkpoints that ``--resume`` continues from. The final output (adapter or model,
tokenizer, ``recipe.yaml``, ``run.json``) is written into a temporary directory and
renamed into place only when training has finished, so a killed run never leaves
anything at the output path.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from flan_builder.atomic import atomic_directory, check_output_free, write_json_atomic
from flan_builder.errors import FlanError
from flan_builder.manifest import command_line, package_versions
from flan_builder.training.model_card import write_model_card
from flan_builder.training.recipe import VIRTUAL_TOKEN_METHODS, Recipe
from flan_builder.workdir import partial_dir

RUN_MANIFEST = "run.json"
TRAIN_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate")
log = logging.getLogger("flan_builder.train")


@dataclass
class TrainResult:
    out: Path
    manifest: dict[str, Any]


def _complete(checkpoint: Path, step: int) -> bool:
    """Trainer writes trainer_state.json after the weights, optimizer and RNG state; our run
    totals (tokens seen, loss sum) come last."""
    from flan_builder.training.sft import read_run_totals

    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        totals = read_run_totals(checkpoint)
    except (OSError, ValueError):
        return False
    return state.get("global_step") == step == totals.get("step")


def last_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill mid-save) are removed."""
    folder = work / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted(((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                    if p.is_dir() and p.name.split("-")[1].isdigit()), reverse=True)
    for step, checkpoint in found:
        if _complete(checkpoint, step):
            return checkpoint
        log.warning("removing incomplete checkpoint %s (interrupted while saving)", checkpoint)
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def ensure_dataset(recipe: Recipe) -> Path:
    """The recipe's dataset directory, built first from ``dataset.build`` when it is missing."""
    path = Path(recipe.dataset_path)
    if path.exists() or recipe.build is None:
        return path
    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig
    from flan_builder.sources import resolve_data_dir

    options = recipe.build
    print(f"building {path} (held out: {recipe.heldout}) from the recipe's dataset.build", file=sys.stderr)
    build(BuildConfig(
        heldout=recipe.heldout, out=path, data_dir=resolve_data_dir(options["data_dir"]),
        seed=options["seed"],
        mixing=MixingConfig(max_per_dataset=options["max_per_dataset"], rate_cap=options["rate_cap"],
                            total=options["total"], all_templates=options["all_templates"],
                            max_templates=options["max_templates"]),
        with_options=options["with_options"], style=options["style"], tasks=options["tasks"],
        train_clusters=options["train_clusters"], num_train_clusters=options["num_train_clusters"],
        with_clusters=options["with_clusters"],
        max_eval_rows=options["max_eval_rows"], prompt_style=options["prompt_style"],
    ))
    return path


def _sft_config(recipe: Recipe, work: Path, padding_free: bool, pretokenized: bool) -> Any:
    import torch
    from trl import SFTConfig

    settings = dict(recipe.sft)
    if pretokenized and not settings.get("packing"):
        # Rows are already truncated to max_length; TRL refuses max_length with padding-free.
        settings["max_length"] = None
    if pretokenized:
        # FLAN trains on the targets only. TRL decides this from the dataset's columns (prompt
        # and completion); ours arrive tokenized (input_ids, completion_mask), so TRL would
        # score the prompts too unless told.
        settings.setdefault("completion_only_loss", True)
    settings["padding_free"] = padding_free
    if recipe.method == "prefix_tuning" and settings.get("gradient_checkpointing"):
        # Known breakage: with activation checkpointing the prefix key/values are not seen
        # by the recomputed attention mask (size mismatch); prefix tuning trains without it.
        log.warning("prefix_tuning: gradient checkpointing turned off (it breaks prefix key/values)")
        settings["gradient_checkpointing"] = False
    if not torch.cuda.is_available():
        settings.setdefault("use_cpu", True)
    settings["bf16"] = training_precision(recipe) == "bf16"
    settings.setdefault("disable_tqdm", False)
    try:
        return SFTConfig(output_dir=str(work / "checkpoints"), **settings)
    except (ValueError, TypeError) as exc:
        raise FlanError(f"{recipe.source}: bad sft settings: {str(exc).splitlines()[0]}") from None


def native_bf16() -> bool:
    """Whether the device training will run on computes bf16 natively: a CUDA GPU that supports
    it, or a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels; without them torch emulates bf16
    on a CPU, slower than fp32)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume not
        return False


def training_precision(recipe: Recipe) -> str:
    """``"bf16"`` or ``"fp32"``: the recipe's ``train.precision``, ``auto`` resolved for this device.
    Measured on 2 CPU cores with AVX512-BF16, smollm2-135m LoRA at the README's settings: bf16 peaks
    at 1.9 GiB against fp32's 2.7 and trains 1.2-1.4x the tokens/s (bench/RESULTS.md)."""
    wanted = recipe.train["precision"]
    explicit = recipe.sft.get("bf16")
    if explicit is not None:
        if wanted != "auto" and (wanted == "bf16") != bool(explicit):
            raise FlanError(f"{recipe.source}: sft.bf16 is {bool(explicit)} but train.precision is "
                            f"{wanted}; set one of them")
        return "bf16" if explicit else "fp32"
    if wanted == "auto":
        return "bf16" if native_bf16() else "fp32"
    return wanted


def weights_dtype(recipe: Recipe, precision: str) -> Any:
    """The dtype the model loads in: bf16 only for a frozen base under bf16 (half its memory); the
    weights full fine-tuning updates stay fp32, since bf16 would round away updates smaller than
    about 1/128 of a weight (FLAN's 3e-5 learning rate makes many)."""
    import torch

    return torch.bfloat16 if precision == "bf16" and recipe.method != "full" else torch.float32


# The model loads with sdpa attention (no varlen flash kernel), so transformers turns a flattened
# batch's position ids into one block-diagonal mask over the whole batch: attention cost and
# memory grow with the square of the batch's total length. Measured on 2 CPU cores, smollm2-135m,
# batch 8: flattened batches of ~600 tokens ran at 100 tokens/s (3.6x TRL's default, 1.9x padded),
# 1,336 at 82, and 2,960 (breast_cancer rows) at 54 against 98 padded. Beyond this many tokens,
# `auto` pads instead.
PADDING_FREE_MAX_TOKENS = 1024


def _choose_padding_free(recipe: Recipe, style: str, mean_row_tokens: float = 0.0) -> bool:
    wanted = recipe.train["padding_free"]
    if wanted == "auto":
        if recipe.method in VIRTUAL_TOKEN_METHODS or style == "messages":
            return False
        flat = recipe.sft.get("per_device_train_batch_size", 8) * mean_row_tokens
        return flat <= PADDING_FREE_MAX_TOKENS
    if wanted and style == "messages":
        raise FlanError(f"{recipe.source}: train.padding_free needs a prompt-completion dataset "
                        "(this one was built --as messages); use sft.packing: true instead")
    return bool(wanted)


def check_recipe(recipe: Recipe) -> Any:
    """Everything a run would build before its first step, built now: the model is resolved,
    the real ``SFTConfig`` and PEFT config are made, so a bad value fails here, not minutes in."""
    import tempfile

    from flan_builder.models import resolve_model
    from flan_builder.training.peft_methods import make_peft_config

    source = resolve_model(recipe.model)
    with tempfile.TemporaryDirectory(prefix="flan-check-") as tmp:
        _sft_config(recipe, Path(tmp), padding_free=False, pretokenized=True)
    make_peft_config(recipe.peft, None)
    return source


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run the recipe; write the final output atomically; return its run manifest."""
    started = time.perf_counter()
    check_recipe(recipe)  # before any folder exists: a bad value must not leave a partial run
    out = Path(recipe.output)
    work = partial_dir(out)
    if resume and out.exists() and not overwrite:
        raise FlanError(f"{out} is already a finished run; nothing to resume (pass --overwrite to "
                        "train again from the start)")
    check_output_free(out, overwrite)
    checkpoint = last_checkpoint(work) if resume else None
    if resume and checkpoint is None:
        raise FlanError(f"no checkpoint to resume from in {work}; start the run without --resume")
    if not resume and work.exists():
        if not overwrite:
            raise FlanError(f"an interrupted run of {out} exists ({work}); pass --resume to continue "
                            "it or --overwrite to start over")
        shutil.rmtree(work)

    from accelerate import PartialState

    with PartialState().main_process_first():
        dataset_dir = ensure_dataset(recipe)

    from flan_builder.models import load_model, load_tokenizer, materialise_model, resolve_model

    # An alias is saved once as a model folder in the model cache (a GGUF loads in about a
    # minute, the folder in seconds); the manifest then records the folder it loaded from.
    source = materialise_model(resolve_model(recipe.model))
    tokenizer = load_tokenizer(source)
    from flan_builder.training.data import load_training_data

    data = load_training_data(dataset_dir, recipe.heldout, tokenizer, recipe.sft.get("max_length"))

    import torch
    from transformers import set_seed

    from flan_builder.training.peft_methods import make_peft_config, parameter_counts
    from flan_builder.training.sft import FlanSFTTrainer, LossProgressCallback

    padding_free = _choose_padding_free(recipe, data.style, data.tokens / max(len(data.dataset), 1))
    args = _sft_config(recipe, work, padding_free, pretokenized=data.style != "messages")
    # Seed before the model and adapter exist: adapter initialisation draws random numbers.
    set_seed(args.seed)
    precision = "bf16" if args.bf16 else "fp32"
    if precision == "bf16" and not torch.cuda.is_available():
        # oneDNN runs bf16 on a CPU and caches a compiled kernel per matmul shape, up to 1,024 of
        # them; padding-free micro-batches bring new shapes all run long, so the cache grew RSS by
        # ~400 MiB over 60 micro-batches (smollm2-135m LoRA). 64 holds one micro-batch's shapes:
        # flat at ~1.6 GiB over 120, no slower. Read when oneDNN starts: set before the first matmul.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    model = load_model(source, dtype=weights_dtype(recipe, precision))
    if recipe.train["init"] == "random":
        model = random_init(model)
    peft_config = make_peft_config(recipe.peft, model)
    work.mkdir(parents=True, exist_ok=True)
    _write_recipe(recipe, work)

    from transformers.trainer_callback import ProgressCallback

    trainer = FlanSFTTrainer(
        model=model, args=args, train_dataset=data.dataset, processing_class=tokenizer,
        peft_config=peft_config, compact_lm_head=recipe.train["compact_lm_head"],
        release_memory=recipe.train["release_memory"],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressCallback())
    if data.style == "messages":
        data.dropped_truncated = data.rows - len(trainer.train_dataset)
    counts = parameter_counts(trainer.model)
    if trainer.is_world_process_zero():
        print(f"{recipe.method}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
              f"({100 * counts['fraction']:.4f}%); {len(trainer.train_dataset):,} rows "
              f"({data.dropped_truncated} dropped: completion beyond max_length, "
              f"{data.truncated} cut short); {'padding-free' if padding_free else 'padded'} batches",
              file=sys.stderr)
    if checkpoint:
        trainer.resume_totals_from(checkpoint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.accelerator.wait_for_everyone()
    steps = trainer.state.global_step
    segment = steps - trainer.resumed_totals["step"]  # steps this process ran

    history = trainer.state.log_history
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    manifest: dict[str, Any] = {
        "kind": "flan-builder training run",
        "format_version": 1,
        "command": command_line(),
        "recipe": recipe.to_json(),
        "model_source": source.to_json(),  # with the base model's licence, where known
        "method": recipe.method,
        "heldout_cluster": recipe.heldout,
        "dataset": {"path": str(dataset_dir), "content_hash": data.manifest.get("content_hash", {}),
                    "style": data.style, "separator": data.manifest.get("separator"),
                    "with_options": data.manifest.get("with_options"),
                    "rows": data.rows, "rows_trained": len(trainer.train_dataset),
                    "dropped_truncated": data.dropped_truncated, "truncated": data.truncated},
        "parameters": counts,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": losses[-1][1] if losses else None,
        # mean per-step loss over the whole run (transformers' training_loss: this segment only)
        "train_loss": (trainer.resumed_totals["loss_sum"] + result.training_loss * segment) / max(steps, 1),
        "loss_curve": losses,
        "tokens_seen": trainer.tokens_seen,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "padding_free": padding_free,
        # what the loss covered: FLAN's is the completion only (runs before 09a78e1 lack this
        # field and scored the prompt too)
        "completion_only_loss": bool(trainer.completion_only_loss),
        "init": recipe.train["init"],
        "packing": bool(recipe.sft.get("packing")),
        "compact_lm_head": trainer.compact_lm_head,
        # bf16: autocast, and a frozen base held in bf16; runs before this field trained in fp32
        # on a CPU and in bf16 (weights included, full tuning too) on a GPU
        "precision": precision,
        "seed": args.seed,
        "device": str(trainer.args.device),
        "world_size": trainer.args.world_size,
        "versions": package_versions(TRAIN_PACKAGES),
    }
    if trainer.is_world_process_zero():
        _write_output(trainer, tokenizer, recipe, manifest, out, overwrite, started)
        shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(out, manifest)


def random_init(model: Any) -> Any:
    """The same architecture and parameter count with freshly drawn weights (the caller seeds)."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    fresh.generation_config = model.generation_config
    return fresh


def _write_recipe(recipe: Recipe, folder: Path) -> None:
    """The recipe as resolved (defaults and overrides applied), beside the run's files."""
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_json(), sort_keys=False), encoding="utf-8")


def _in_fp32(model: Any) -> Any:
    """A base held in bf16 for training, in fp32 before an adapter merges into it: a merged
    model is saved in fp32 like any other, and the adapter's small deltas are not rounded."""
    import torch

    return model if model.dtype == torch.float32 else model.to(torch.float32)


def _write_output(trainer: Any, tokenizer: Any, recipe: Recipe, manifest: dict[str, Any], out: Path,
                  overwrite: bool, started: float) -> None:
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if recipe.train["init"] == "random" and recipe.method != "full":
            # an adapter alone would load onto the pretrained weights: save the whole tuned model
            trainer.model = _in_fp32(trainer.model).merge_and_unload()
            manifest["merged"] = "."
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        tensorboard = partial_dir(out) / "checkpoints" / "runs"
        if tensorboard.is_dir():  # report_to: tensorboard writes beside the checkpoints; keep it
            shutil.copytree(tensorboard, tmp / "runs")
        _write_recipe(recipe, tmp)
        write_model_card(manifest, tmp, merged="merged" in manifest)  # names the base model's licence
        if recipe.train["merge"] and "merged" not in manifest:
            if recipe.method == "full":
                manifest["merged"] = "."  # a full fine-tune is already a whole model
            else:
                merged = _in_fp32(trainer.model).merge_and_unload()
                merged.save_pretrained(str(tmp / "merged"))
                tokenizer.save_pretrained(str(tmp / "merged"))
                write_model_card(manifest, tmp / "merged", merged=True)
                manifest["merged"] = "merged"
        manifest["wall_time_s"] = round(time.perf_counter() - started, 2)
        manifest["peak_memory_mb"] = round(peak_memory_mb(), 1)
        manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # Written last: its presence marks a complete run.
        write_json_atomic(tmp / RUN_MANIFEST, manifest)

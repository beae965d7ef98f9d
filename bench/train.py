"""Training benchmark: our SFT step against TRL's SFTTrainer with its default settings.

Same model (LoRA on every linear layer), same rows, same seed, same number of steps, in
this one process. Each setting runs ``--steps`` optimizer steps after one warm-up step;
tokens/s counts the real (non-padding) tokens trained, so padding is paid for, not counted.
Peak memory is the largest RSS growth (CPU) or ``max_memory_allocated`` (GPU) during the run.

Settings:
  * trl-default: ``SFTConfig`` defaults (padded batches, TRL's LM head, activation
    checkpointing on), only ``max_length`` set to ours so both train on the same tokens;
  * ours-padded: our trainer with padded batches (shows what the compact LM head gives);
  * ours: the recipe defaults (padding-free batches + compact LM head, no checkpointing);
  * ours-packed: TRL's BFD packing (padding-free) instead of one flat batch.

    .venv/bin/python bench/train.py --dataset build/heldout-nli --steps 8

``--batch-size 1,2,4,8`` sweeps batch sizes in this one process (each batch size compared
within itself): with long rows it shows where padding-free batches stop paying, the
crossover behind ``train.padding_free: auto``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from peft import LoraConfig
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from flan_builder.models import load_model, load_tokenizer, resolve_model
from flan_builder.training.data import tokenize_prompt_completion
from flan_builder.training.sft import FlanSFTTrainer


class PeakRSS:
    """Samples this process's RSS every 20 ms; ``peak_mb`` is the growth over the start."""

    def __init__(self) -> None:
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        return (self.peak - self.start) / 2**20


def lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def run(name: str, source, tokenizer, rows, tokenized, batch_size: int, args: argparse.Namespace) -> dict:
    cpu = not torch.cuda.is_available()
    common = dict(output_dir=f"/tmp/bench-train-{name}", max_steps=args.steps + 1,
                  per_device_train_batch_size=batch_size, report_to="none", save_strategy="no",
                  logging_steps=1, disable_tqdm=True, seed=0, use_cpu=cpu,
                  bf16=not cpu and torch.cuda.is_bf16_supported())
    set_seed(0)
    model = load_model(source, dtype=torch.bfloat16 if common["bf16"] else torch.float32)
    if name == "trl-default":
        config = SFTConfig(max_length=args.max_length, **common)
        trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                             peft_config=lora())
    else:
        packed = name == "ours-packed"
        config = SFTConfig(
            max_length=args.max_length if packed else None, gradient_checkpointing=False,
            padding_free=name in ("ours", "ours-packed"), packing=packed, **common)
        trainer = FlanSFTTrainer(model=model, args=config, train_dataset=tokenized,
                                 processing_class=tokenizer, peft_config=lora())
    timings: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            timings.append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    with PeakRSS() as memory:
        trainer.train()
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    measured_tokens = tokens[-1] - tokens[0]  # after the warm-up step
    seconds = sum(timings[1:])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"setting": name, "batch_size": batch_size, "tokens": int(measured_tokens),
            "seconds": round(seconds, 2),
            "tokens_per_s": measured_tokens / seconds, "peak_mb": round(memory.peak_mb),
            "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="build/heldout-nli")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", default="8", help="rows per step; a comma list sweeps several")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--settings", default="trl-default,ours-padded,ours,ours-packed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    split = load_from_disk(args.dataset)["train"].select_columns(["prompt", "completion"])
    results = []
    for batch_size in [int(b) for b in args.batch_size.split(",")]:
        count = (args.steps + 1) * batch_size
        # The same rows for every setting, none longer than max_length: nothing is truncated or
        # dropped, so every setting trains on exactly the same tokens.
        candidates = split.select(range(min(len(split), 3 * count)))
        full, _ = tokenize_prompt_completion(candidates, tokenizer, None)
        fits = [i for i, ids in enumerate(full["input_ids"]) if len(ids) <= args.max_length][:count]
        rows, tokenized = candidates.select(fits), full.select(fits)
        mean_tokens = sum(len(full["input_ids"][i]) for i in fits) / len(fits)
        batch = [run(name, source, tokenizer, rows, tokenized, batch_size, args)
                 for name in args.settings.split(",")]
        base = next((r for r in batch if r["setting"] == "trl-default"), batch[0])
        for r in batch:
            r["mean_row_tokens"] = round(mean_tokens, 1)
            r["vs_base"] = r["tokens_per_s"] / base["tokens_per_s"]
        results += batch
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{args.model}, LoRA r=16 all-linear, max_length {args.max_length}, "
          f"{args.steps} steps after 1 warm-up, {device}; each ratio is against trl-default where it ran, "
          "else the first setting, at the same batch size")
    print("| batch | batch × mean row tokens | setting | tokens | s | tokens/s | ratio | peak MiB "
          "| loss first → last |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['batch_size']} | {r['batch_size'] * r['mean_row_tokens']:,.0f} | {r['setting']} | "
              f"{r['tokens']:,} | {r['seconds']} | {r['tokens_per_s']:.0f} | {r['vs_base']:.2f}x | "
              f"{r['peak_mb']:,} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

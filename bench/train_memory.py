"""Where a LoRA run's memory goes, phase by phase, and what each setting saves.

Each configuration runs in its own process (RSS never shrinks back to the allocator's
start, so one process per configuration keeps the peaks honest) through the real
``flan train`` path (``training.job.train`` with a recipe and overrides) for ``--steps``
optimizer steps. A thread samples the process's RSS every 5 ms and files each sample under
the phase the run is in, so the report shows the peak of each phase:

  load       model and tokenizer loaded, data tokenised (up to the first step)
  forward    inside the model's forward
  backward   from the end of forward to the optimizer step
  optimizer  the optimizer step
  between    everything else (logging, the data loader)

Tokens/s counts trained (non-padding) tokens after the first step. Run it with nothing else
on the machine when the tokens/s column matters; the RSS column does not depend on load.

    .venv/bin/python bench/train_memory.py --dataset build/rte-only --steps 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIGS: dict[str, list[str]] = {
    "readme": [],  # the README's recipe: LoRA r16 on every linear layer, dropout 0.05, batch 8
    "dropout0": ["peft.dropout=0.0"],
    "checkpointing": ["sft.gradient_checkpointing=true"],
    "padded": ["train.padding_free=false"],
    "dropout0+checkpointing": ["peft.dropout=0.0", "sft.gradient_checkpointing=true"],
    # the same global batch (8 rows) in smaller micro-batches: activations scale with the micro-batch
    "micro4x2": ["sft.per_device_train_batch_size=4", "sft.gradient_accumulation_steps=2"],
    "micro2x4": ["sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=4"],
    "dropout0+micro4x2": ["peft.dropout=0.0", "sft.per_device_train_batch_size=4",
                          "sft.gradient_accumulation_steps=2"],
    "dropout0+micro2x4": ["peft.dropout=0.0", "sft.per_device_train_batch_size=2",
                          "sft.gradient_accumulation_steps=4"],
}


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PhaseSampler:
    """RSS sampled every 5 ms; the peak per phase name, in MiB."""

    def __init__(self) -> None:
        self.phase = "load"
        self.peaks: dict[str, float] = {}
        self.step_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            mib = _rss() / 2**20
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), mib)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def run_one(recipe_name: str, dataset: str, steps: int, overrides: list[str]) -> dict:
    """One configuration, in this process (called in a child process)."""
    from transformers import TrainerCallback

    from flan_builder.resources import resolve
    from flan_builder.training import job, sft
    from flan_builder.training.recipe import load_recipe

    sampler = PhaseSampler()

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            sampler.step_times.append(time.perf_counter())
            sampler.phase = "between"

        def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
            sampler.phase = "optimizer"

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            sampler.phase = "between"

    original_init = sft.FlanSFTTrainer.__init__

    def init_with_probe(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        original_init(self, *args, **kwargs)
        self.add_callback(Phases())
        model = self.model

        def before(*_a):  # noqa: ANN002
            sampler.phase = "forward"

        def after(*_a):  # noqa: ANN002
            sampler.phase = "backward"

        model.register_forward_pre_hook(before)
        model.register_forward_hook(after)

    sft.FlanSFTTrainer.__init__ = init_with_probe
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(resolve(recipe_name, "train"), [
            f"dataset.path={dataset}", f"output={tmp}/run", "heldout=none", f"sft.max_steps={steps}",
            "sft.save_steps=100000", "sft.logging_steps=1", *overrides])
        job.train(recipe)
        run = json.loads((Path(tmp) / "run" / "run.json").read_text(encoding="utf-8"))
    peaks = sampler.stop()
    times = sampler.step_times
    tokens_per_step = run["tokens_seen"] / max(run["steps"], 1)
    seconds = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")
    return {"peaks_mib": peaks, "peak_mib": max(peaks.values()), "run_peak_memory_mb": run["peak_memory_mb"],
            "tokens_per_s": round(tokens_per_step / seconds, 1), "final_loss": run["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="build/rte-only")
    parser.add_argument("--recipe", default="heldout-nli")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", help="comma-separated configuration names to run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the configurations this many times, interleaved (for tokens/s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(args.recipe, args.dataset, args.steps, CONFIGS[args.child])
        print("RESULT " + json.dumps(result))
        return
    names = args.only.split(",") if args.only else list(CONFIGS)
    results: dict[str, list[dict]] = {}
    for name in names * args.repeats:  # interleaved: a change in load hits every configuration
        out = subprocess.run([sys.executable, __file__, "--child", name, "--dataset", args.dataset,
                              "--recipe", args.recipe, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[0][7:])
        results.setdefault(name, []).append(r)
        print(f"{name}: peak {r['peak_mib']:.0f} MiB, {r['tokens_per_s']} tokens/s, phases {r['peaks_mib']}",
              flush=True)
    if len(names) > 1 and names[0] in results:  # throughput against the first configuration
        first = sum(r["tokens_per_s"] for r in results[names[0]]) / len(results[names[0]])
        for name, runs in results.items():
            mean = sum(r["tokens_per_s"] for r in runs) / len(runs)
            print(f"{name}: {mean:.1f} tokens/s mean of {len(runs)} ({mean / first:.2f}x {names[0]}), "
                  f"peak {max(r['peak_mib'] for r in runs):.0f} MiB")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

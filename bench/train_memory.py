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

A whole ``flan train`` command (``--whole``) adds the phases before training (``setup``: the
recipe checked, libraries imported; ``build``: the dataset built in the process when
``--build``; ``tokenise``; ``model``; ``trainer``: TRL's dataset preparation) and ``save``, and
splits training into ``forward`` (the transformer body), ``head`` (the LM head and loss) and
``backward``; each micro-batch's peak is kept beside its tokens and completion tokens.

The peak of a full run is set by its heaviest micro-batches, which a few steps from the start
of an epoch rarely meet. ``--plan FILE`` walks the run's own data loader (the recipe's
``max_steps`` x accumulation micro-batches, same seed, no model step) and writes every
micro-batch's rows and token counts; ``--worst N`` then trains, in that order, over the N
micro-batches with the most tokens and the N with the most completion tokens, so a few
steps meet the full run's peak:

    .venv/bin/python bench/train_memory.py --dataset build/heldout-nli --plan /tmp/plan.json
    .venv/bin/python bench/train_memory.py --dataset build/heldout-nli --whole --plan /tmp/plan.json --worst 8

``--set KEY=VALUE`` adds a recipe override to every configuration (``--set model=gemma3-270m``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, list[str]] = {
    "readme": [],  # the recipe as shipped (train.precision auto: bf16 where the CPU has it)
    "fp32": ["train.precision=fp32"],  # the shipped recipe before train.precision (2026-12-01)
    "bf16": ["train.precision=bf16"],
    "keep_freed": ["train.release_memory=false"],  # malloc keeps freed pages (before 2026-11-30)
    "dropout0": ["peft.dropout=0.0"],
    "checkpointing": ["sft.gradient_checkpointing=true"],
    "padded": ["train.padding_free=false"],
    "dropout0+checkpointing": ["peft.dropout=0.0", "sft.gradient_checkpointing=true"],
    # the same global batch (8 rows) in smaller micro-batches: activations scale with the micro-batch
    "micro8x1": ["sft.per_device_train_batch_size=8", "sft.gradient_accumulation_steps=1"],
    "micro4x2": ["sft.per_device_train_batch_size=4", "sft.gradient_accumulation_steps=2"],
    "micro2x4": ["sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=4"],
    "dropout0+micro4x2": ["peft.dropout=0.0", "sft.per_device_train_batch_size=4",
                          "sft.gradient_accumulation_steps=2"],
    "dropout0+micro2x4": ["peft.dropout=0.0", "sft.per_device_train_batch_size=2",
                          "sft.gradient_accumulation_steps=4"],
}
PAGE = 4096


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def heap_mib() -> dict[str, float]:
    """glibc's malloc: bytes in use (heap + mmapped) and bytes free but kept in its heaps, MiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):  # not glibc 2.33+
        return {}
    info = libc.mallinfo2()
    resident, shared = _statm()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rss": round(resident / 2**20, 1), "file_backed": round(shared / 2**20, 1),
            "malloc_in_use": round((info.uordblks + info.hblkhd) / 2**20, 1),
            "malloc_free_kept": round(info.fordblks / 2**20, 1),
            # page faults and CPU seconds so far: what a change in allocation costs, even under load
            "minor_faults": usage.ru_minflt, "user_s": round(usage.ru_utime, 2),
            "system_s": round(usage.ru_stime, 2)}


def _statm() -> tuple[int, int]:
    """Resident and file-backed/shared resident bytes of this process."""
    with open("/proc/self/statm") as handle:
        fields = handle.read().split()
    return int(fields[1]) * PAGE, int(fields[2]) * PAGE


class PhaseSampler:
    """RSS sampled every 5 ms; the peak per phase name and per micro-batch, in MiB."""

    def __init__(self, phase: str = "load") -> None:
        self.phase = phase
        self.micro: int | None = None  # the micro-batch being run
        self.peaks: dict[str, float] = {}
        self.file_at_peak: dict[str, float] = {}  # of each phase's peak, how much was file-backed
        self.micro_peaks: dict[int, float] = {}
        self.step_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            resident, shared = _statm()
            mib = resident / 2**20
            if mib > self.peaks.get(self.phase, 0.0):
                self.peaks[self.phase] = mib
                self.file_at_peak[self.phase] = shared / 2**20
            if self.micro is not None:
                self.micro_peaks[self.micro] = max(self.micro_peaks.get(self.micro, 0.0), mib)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


class _PlanDone(Exception):
    """Raised once the data loader has been walked: the plan needs no training step."""


def _batch_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """Tokens (padding excluded) and completion tokens of one collated micro-batch."""
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    return tokens, int((batch["labels"] != -100).sum())


def walk_loader(trainer: Any, plan_path: Path) -> None:
    """Write the micro-batches the run would train on, in order: their rows and token counts.

    The loader is the trainer's own, prepared and seeded as its training loop does for epoch 0;
    the rows are those the loader fetched (``datasets.Dataset.__getitems__``).
    """
    import datasets

    fetched: list[list[int]] = []
    original = datasets.Dataset.__getitems__

    def recording(self: Any, keys: list[int]) -> Any:
        fetched.append([int(k) for k in keys])
        return original(self, keys)

    datasets.Dataset.__getitems__ = recording
    loader = trainer.get_train_dataloader()
    if hasattr(loader, "set_epoch"):  # as transformers' loop does before each epoch
        loader.set_epoch(0)
    inner = getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(0)
    wanted = trainer.args.max_steps * trainer.args.gradient_accumulation_steps
    micro_batches = []
    for batch in loader:
        tokens, completion = _batch_counts(batch)
        # the loader fetches one batch ahead: the rows of the i-th batch are the i-th fetched
        micro_batches.append({"rows": fetched[len(micro_batches)], "tokens": tokens,
                              "completion_tokens": completion})
        if len(micro_batches) == wanted:
            break
    datasets.Dataset.__getitems__ = original
    plan_path.write_text(json.dumps({
        "max_steps": trainer.args.max_steps, "accumulation": trainer.args.gradient_accumulation_steps,
        "rows": len(trainer.train_dataset), "micro_batches": micro_batches}), encoding="utf-8")
    raise _PlanDone


def worst_rows(plan: dict[str, Any], n: int) -> tuple[list[int], list[dict[str, Any]]]:
    """The rows of the n micro-batches with the most tokens and the n with the most completion
    tokens, in the run's order, topped up to whole optimizer steps with the next heaviest."""
    batches = plan["micro_batches"]
    by_tokens = sorted(range(len(batches)), key=lambda i: -batches[i]["tokens"])
    by_completion = sorted(range(len(batches)), key=lambda i: -batches[i]["completion_tokens"])
    chosen = set(by_tokens[:n]) | set(by_completion[:n])
    for i in by_tokens[n:]:
        if len(chosen) % plan["accumulation"] == 0:
            break
        chosen.add(i)
    picked = [batches[i] for i in sorted(chosen)]
    return [row for b in picked for row in b["rows"]], picked


def run_one(recipe_name: str, dataset: str, steps: int | None, overrides: list[str], *, whole: bool = False,
            build: bool = False, plan_out: str | None = None, plan_in: str | None = None,
            worst: int = 0) -> dict:
    """One configuration, in this process (called in a child process)."""
    import flan_builder.models as models
    import flan_builder.training.data as data_module
    from flan_builder.resources import resolve
    from flan_builder.training import job, sft
    from flan_builder.training.recipe import load_recipe

    sampler = PhaseSampler("setup" if whole else "load")
    micro_counts: list[tuple[int, int]] = []
    heap: list[dict[str, Any]] = []  # glibc heap and RSS before training and after each step
    plan: dict[str, Any] = {}
    worst_row_ids: list[int] = []
    picked: list[dict[str, Any]] = []  # the planned micro-batches trained over
    if worst:
        if not plan_in:
            raise SystemExit("--worst needs --plan FILE (written by a --plan run first)")
        plan = json.loads(Path(plan_in).read_text(encoding="utf-8"))
        worst_row_ids, picked = worst_rows(plan, worst)

    def in_phase(name: str, function: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if whole:
                sampler.phase = name
            return function(*args, **kwargs)
        return wrapped

    original_ensure = job.ensure_dataset
    original_load_data = data_module.load_training_data

    def load_data(*args: Any, **kwargs: Any) -> Any:
        data = in_phase("tokenise", original_load_data)(*args, **kwargs)
        if worst:  # the heaviest micro-batches of the planned run, in its order (a sequential sampler)
            data.dataset = data.dataset.select(worst_row_ids)
        return data

    job.ensure_dataset = in_phase("build", original_ensure)
    data_module.load_training_data = load_data
    models.load_model = in_phase("model", models.load_model)
    job._write_output = in_phase("save", job._write_output)
    original_init = sft.FlanSFTTrainer.__init__

    def init_with_probe(self: Any, *args: Any, **kwargs: Any) -> None:
        if whole:
            sampler.phase = "trainer"
        original_init(self, *args, **kwargs)
        self.add_callback(Phases())
        model = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model

        def before(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            micro_counts.append(_batch_counts(kwargs))
            sampler.micro = len(micro_counts) - 1
            sampler.phase = "forward"

        def body_done(*_a: Any) -> None:
            sampler.phase = "head"

        def after(*_a: Any) -> None:
            sampler.phase = "backward"

        model.register_forward_pre_hook(before, with_kwargs=True)
        base.base_model.register_forward_hook(body_done)  # the transformer body; the LM head follows
        model.register_forward_hook(after)

    class Phases(sft.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            heap.append({"step": 0, **heap_mib()})

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sampler.step_times.append(time.perf_counter())
            sampler.phase = "between"

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sampler.phase, sampler.micro = "optimizer", None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sampler.phase = "between"
            heap.append({"step": state.global_step, **heap_mib()})

    sft.FlanSFTTrainer.__init__ = init_with_probe
    if plan_out:
        sft.FlanSFTTrainer.train = lambda self, **_kw: walk_loader(self, Path(plan_out))
    with tempfile.TemporaryDirectory() as tmp:
        settings = [f"output={tmp}/run", "sft.save_steps=100000", "sft.logging_steps=1"]
        if build:  # built in this process first, as `flan train` does when the dataset is missing
            settings.append(f"dataset.path={tmp}/build")
        else:
            settings += [f"dataset.path={dataset}"]
        if not whole:
            settings.append("heldout=none")
        if worst:  # whole optimizer steps over the chosen micro-batches, in the run's order
            settings += ["sft.train_sampling_strategy=sequential",
                         f"sft.max_steps={len(picked) // plan['accumulation']}"]
        elif steps is not None:
            settings.append(f"sft.max_steps={steps}")
        recipe = load_recipe(resolve(recipe_name, "train"), [*settings, *overrides])
        try:
            job.train(recipe)
        except _PlanDone:
            return {"plan": plan_out}
        run = json.loads((Path(tmp) / "run" / "run.json").read_text(encoding="utf-8"))
    peaks = sampler.stop()
    times = sampler.step_times
    tokens_per_step = run["tokens_seen"] / max(run["steps"], 1)
    seconds = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")
    micro = [{"tokens": t, "completion_tokens": c, "peak_mib": round(sampler.micro_peaks.get(i, 0.0), 1)}
             for i, (t, c) in enumerate(micro_counts)]
    result = {"peaks_mib": peaks, "peak_mib": max(peaks.values()),
              "file_backed_at_peak_mib": {k: round(v, 1) for k, v in sampler.file_at_peak.items()},
              "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "run_peak_memory_mb": run["peak_memory_mb"], "steps": run["steps"],
              "tokens_per_s": round(tokens_per_step / seconds, 1), "final_loss": run["final_loss"],
              "micro_batches": micro, "heap_by_step": heap,
              "dataset_hash": run["dataset"]["content_hash"].get("train")}
    if picked:  # the micro-batches trained must be the planned ones
        result["matches_plan"] = [m["tokens"] for m in micro] == [p["tokens"] for p in picked]
    return result


def _child_args(args: argparse.Namespace, name: str) -> list[str]:
    command = [sys.executable, __file__, "--child", name, "--dataset", args.dataset, "--recipe", args.recipe]
    if args.steps is not None:
        command += ["--steps", str(args.steps)]
    for flag in ("whole", "build"):
        if getattr(args, flag):
            command.append(f"--{flag}")
    if args.plan:
        command += ["--plan", args.plan]
    if args.worst:
        command += ["--worst", str(args.worst)]
    for setting in args.set:
        command += ["--set", setting]
    return command


def _summary(r: dict[str, Any]) -> str:
    text = (f"peak {r['peak_mib']:.0f} MiB (ru_maxrss {r['ru_maxrss_mib']:.0f}), "
            f"{r['tokens_per_s']} tokens/s, phases {r['peaks_mib']}")
    micro = r.get("micro_batches") or []
    if micro:
        top = max(micro, key=lambda m: m["peak_mib"])
        text += (f"; {len(micro)} micro-batches, {max(m['tokens'] for m in micro)} tokens at most; highest "
                 f"micro-batch peak {top['peak_mib']:.0f} MiB at {top['tokens']} tokens "
                 f"({top['completion_tokens']} completion)")
    if "matches_plan" in r:
        text += f"; micro-batches as planned: {r['matches_plan']}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="build/rte-only")
    parser.add_argument("--recipe", default="heldout-nli")
    parser.add_argument("--steps", type=int,
                        help="optimizer steps (default 6; the recipe's own with --whole)")
    parser.add_argument("--only", help="comma-separated configuration names to run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the configurations this many times, interleaved (for tokens/s)")
    parser.add_argument("--whole", action="store_true",
                        help="the whole `flan train` command: the recipe's held-out cluster and steps, "
                             "phases before training and the save")
    parser.add_argument("--build", action="store_true",
                        help="with --whole: build the recipe's dataset in the process first (into a "
                             "temporary folder), as `flan train` does when it is missing")
    parser.add_argument("--plan", help="without --worst: write the run's micro-batches here and stop; "
                                       "with --worst: read them")
    parser.add_argument("--worst", type=int, default=0,
                        help="train over the N heaviest micro-batches of --plan (by tokens and by "
                             "completion tokens)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override added to every configuration (e.g. model=gemma3-270m)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build and not args.whole:
        parser.error("--build needs --whole")
    if args.steps is None and not (args.whole or args.plan):  # a plan covers the recipe's own steps
        args.steps = 6
    if args.child:
        plan_out = args.plan if args.plan and not args.worst else None
        result = run_one(args.recipe, args.dataset, args.steps, CONFIGS[args.child] + args.set,
                         whole=args.whole or bool(plan_out), build=args.build, plan_out=plan_out,
                         plan_in=args.plan if args.worst else None, worst=args.worst)
        print("RESULT " + json.dumps(result))
        return
    names = args.only.split(",") if args.only else list(CONFIGS)
    if (args.whole or args.plan) and not args.only:
        names = ["readme"]
    results: dict[str, list[dict]] = {}
    for name in names * args.repeats:  # interleaved: a change in load hits every configuration
        out = subprocess.run(_child_args(args, name), capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[0][7:])
        if "plan" in r:
            plan = json.loads(Path(r["plan"]).read_text(encoding="utf-8"))
            batches = plan["micro_batches"]
            print(f"{name}: wrote {r['plan']}: {len(batches)} micro-batches of {plan['rows']:,} rows; tokens "
                  f"at most {max(b['tokens'] for b in batches)}, completion tokens at most "
                  f"{max(b['completion_tokens'] for b in batches)}", flush=True)
            continue
        results.setdefault(name, []).append(r)
        print(f"{name}: {_summary(r)}", flush=True)
    if len(results) > 1 and names[0] in results:  # throughput against the first configuration
        first = sum(r["tokens_per_s"] for r in results[names[0]]) / len(results[names[0]])
        for name, runs in results.items():
            mean = sum(r["tokens_per_s"] for r in runs) / len(runs)
            print(f"{name}: {mean:.1f} tokens/s mean of {len(runs)} ({mean / first:.2f}x {names[0]}), "
                  f"peak {max(r['peak_mib'] for r in runs):.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    for runs in results.values():  # the per-micro-batch and per-step lists are long: in --json only
        for r in runs:
            r.pop("micro_batches", None)
            if len(r.get("heap_by_step", [])) > 3:
                r["heap_by_step"] = [r["heap_by_step"][0], r["heap_by_step"][-1]]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

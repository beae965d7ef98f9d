"""Throughput, MFU and peak memory of ``flan train`` runs, from their ``run.json`` (bench/gpu.sh).

    python bench/gpu_summary.py runs/gpu/runs/* --logs bench/gpu-results/logs --out bench/gpu-results
    python bench/gpu_summary.py bench/gpu-results/runs/*.run.json --peak-tflops 989.4   # the copies

Each argument is a run directory (``run.json`` inside) or a ``run.json`` file. Writes
``gpu_summary.json`` and ``gpu_summary.md`` into ``--out`` and prints the table.

Time, best source first:
  * ``train_runtime`` that the Trainer logs to TensorBoard (``report_to: tensorboard``): the
    training loop alone, first-step warm-up included; model loading, tokenizing and saving
    excluded. Steady tokens/s comes from the same events: tokens between the first and the last
    logged step over the time between them (warm-up excluded).
  * else the training bar's elapsed time in the run's log (``--logs DIR/train-NAME.log``);
  * else ``wall_time_s`` from ``run.json`` (the whole job: load, tokenize, train, save).

Tokens are ``tokens_seen``: the real tokens trained (attention-mask sum; padding not counted).

Model FLOPs per token (no activation recomputation: the recipes train without gradient
checkpointing), N = all parameters, N_t = trainable parameters:

    2 N (forward) + 2 N (backward: gradients w.r.t. activations, needed through every layer
    even when its weights are frozen) + 2 N_t (backward: gradients w.r.t. trainable weights)
    = 4 N + 2 N_t   -> 6 N for full fine-tuning, ~4 N for LoRA (N_t is ~3% of N).

    MFU = (4 N + 2 N_t) x tokens / seconds / peak dense bf16 FLOP/s of the GPU

Two counts of N bracket the truth: ``mfu`` uses every parameter, so it charges the vocabulary
matrices as matmuls at every position (an upper bound: the input embedding is a lookup, and the
compact LM head projects only completion positions); ``mfu_nonembedding`` leaves the vocabulary
matrices out (V x d, twice when input and output embeddings are untied; a lower bound: it leaves
out the LM head's real work). For Gemma-3-270M (262k vocabulary) the embedding is ~63% of N, so
the two differ by ~2.7x; for SmolLM2-135M (49k) by ~1.3x. Attention-score FLOPs
(~12 x layers x d x context per token) are left out: under 3% at these row lengths.
``mfu_6n`` (6 N per token whatever the method, the common convention) is in the JSON for
comparison with figures quoted that way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets. The first
# pattern that matches the CUDA device name (lower case) wins.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float, str]] = [
    (("gh200",), 989.4, "GH200 (H100/H200 SXM class)"),
    (("h200",), 989.4, "H200 SXM"),
    (("h100", "pcie"), 756.5, "H100 PCIe"),
    (("h100", "nvl"), 835.5, "H100 NVL"),
    (("h100",), 989.4, "H100 SXM"),
    (("a100",), 312.0, "A100"),
    (("l40s",), 362.05, "L40S"),
    (("l4",), 121.0, "L4"),
]


def peak_tflops(gpu: str | None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, what it is) for a CUDA device name; (None, why) when unknown."""
    if not gpu:
        return None, "no GPU (CPU run): no MFU"
    name = gpu.lower()
    for words, tflops, what in PEAK_BF16_TFLOPS:
        if all(w in name for w in words):
            return tflops, f"{what}: {tflops:g} TFLOP/s dense bf16"
    return None, f"{gpu}: peak unknown; pass --peak-tflops (or GPU_PEAK_TFLOPS to bench/gpu.sh)"


def detect_gpu() -> str | None:
    """The CUDA device name, or None without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def tensorboard_timing(run_dir: Path) -> dict[str, Any] | None:
    """train_runtime and the steady tokens/s window from the run's TensorBoard events."""
    files = sorted(run_dir.glob("runs/**/events.out.tfevents.*"))
    if not files:
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    runtime: float | None = None
    tokens: list[tuple[int, float, float]] = []
    for folder in sorted({f.parent for f in files}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags().get("scalars", [])
        if "train/train_runtime" in tags:
            runtime = events.Scalars("train/train_runtime")[-1].value
        if "train/num_tokens" in tags:
            tokens += [(e.step, e.wall_time, e.value) for e in events.Scalars("train/num_tokens")]
    out: dict[str, Any] = {"train_runtime_s": runtime}
    tokens.sort()
    if len(tokens) >= 2 and tokens[-1][1] > tokens[0][1]:
        (s0, t0, n0), (s1, t1, n1) = tokens[0], tokens[-1]
        out["steady"] = {"from_step": s0, "to_step": s1, "tokens": n1 - n0, "seconds": round(t1 - t0, 3),
                         "tokens_per_s": (n1 - n0) / (t1 - t0)}
    return out


BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def bar_seconds(log: Path) -> float | None:
    """Elapsed time of the training bar's last update in a ``flan train`` log."""
    if not log.is_file():
        return None
    found = BAR.findall(log.read_text(encoding="utf-8", errors="replace"))
    finished = [m for m in found if m[0] == m[1]] or found
    if not finished:
        return None
    _, _, hours, minutes, seconds = finished[-1]
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)


def vocabulary_parameters(manifest: dict[str, Any], run_dir: Path | None) -> int | None:
    """V x d, twice when the output embedding is not tied to the input one; None if unknown."""
    candidates = [run_dir / "config.json"] if run_dir else []
    location = (manifest.get("model_source") or {}).get("location")
    if location:
        candidates.append(Path(location) / "config.json")
    for path in candidates:
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            text = config.get("text_config") or config
            vocab, hidden = text.get("vocab_size"), text.get("hidden_size")
            if vocab and hidden:
                tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
                return int(vocab) * int(hidden) * (1 if tied else 2)
    return None


def summarise_run(path: Path, logs: Path | None, peak: float | None) -> dict[str, Any]:
    """One run's figures."""
    run_dir = path if path.is_dir() else None
    manifest = json.loads((path / "run.json" if run_dir else path).read_text(encoding="utf-8"))
    name = run_dir.name if run_dir else path.name.removesuffix(".json").removesuffix(".run")
    tokens = int(manifest["tokens_seen"])
    params = manifest["parameters"]
    total, trainable = int(params["total"]), int(params["trainable"])
    row: dict[str, Any] = {
        "run": name, "model": manifest["recipe"]["model"], "method": manifest["method"],
        "steps": manifest["steps"], "tokens_seen": tokens,
        "batch_size": manifest["recipe"]["sft"].get("per_device_train_batch_size"),
        "max_length": manifest["recipe"]["sft"].get("max_length"),
        "bf16": manifest["recipe"]["sft"].get("bf16"),
        "parameters_total": total, "parameters_trainable": trainable,
        "wall_time_s": manifest.get("wall_time_s"), "device": manifest.get("device"),
        "peak_memory_mib": manifest.get("peak_memory_mb"),
        "peak_memory_kind": ("torch.cuda.max_memory_allocated"
                             if str(manifest.get("device", "")).startswith("cuda") else "process max RSS"),
        "first_loss": manifest["loss_curve"][0][1] if manifest.get("loss_curve") else None,
        "final_loss": manifest.get("final_loss"),
    }
    timing = tensorboard_timing(run_dir) if run_dir else None
    seconds, basis = None, None
    if timing and timing.get("train_runtime_s"):
        seconds, basis = timing["train_runtime_s"], "train_runtime (TensorBoard): training loop"
    elif logs and (elapsed := bar_seconds(logs / f"train-{name}.log")):
        seconds, basis = elapsed, "training bar elapsed (log): training loop, 1 s resolution"
    elif manifest.get("wall_time_s"):
        seconds = manifest["wall_time_s"]
        basis = "wall_time_s (run.json): whole job incl. load, tokenize, save"
    row["train_seconds"], row["train_seconds_basis"] = seconds, basis
    row["tokens_per_s"] = tokens / seconds if seconds else None
    row["tokens_per_s_steady"] = timing["steady"]["tokens_per_s"] if timing and "steady" in timing else None
    row["steady_window"] = timing.get("steady") if timing else None
    row["tokens_per_s_job"] = tokens / manifest["wall_time_s"] if manifest.get("wall_time_s") else None

    vocab = vocabulary_parameters(manifest, run_dir)
    vocab_trainable = vocab if manifest["method"] == "full" and vocab else 0
    row["parameters_vocabulary"] = vocab
    row["flops_per_token"] = 4 * total + 2 * trainable
    row["flops_per_token_nonembedding"] = (4 * (total - vocab) + 2 * (trainable - vocab_trainable)
                                           if vocab else None)
    rate = row["tokens_per_s"]
    for key, flops in (("mfu", row["flops_per_token"]),
                       ("mfu_nonembedding", row["flops_per_token_nonembedding"]), ("mfu_6n", 6 * total)):
        row[key] = flops * rate / (peak * 1e12) if peak and rate and flops else None
    row["mfu_steady"] = (row["flops_per_token"] * row["tokens_per_s_steady"] / (peak * 1e12)
                         if peak and row["tokens_per_s_steady"] else None)
    return row


def _cluster_mean(results: dict[str, Any], model: str, options: bool) -> float | None:
    """A model's held-out cluster mean in one evaluation, with or without OPTIONS."""
    found = [c["mean"] for c in results["clusters"]
             if c["model"] == model and c.get("options", True) is options]
    return found[0] if found else None


def summarise_evals(folder: Path) -> list[dict[str, Any]]:
    """Per model of each ``eval-*/results.json``: held-out cluster mean with and without OPTIONS
    (EVAL_OPTIONS), each against the base model's, rows scored, seconds."""
    out = []
    for path in sorted(folder.glob("eval-*/results.json")):
        results = json.loads(path.read_text(encoding="utf-8"))

        names = [model["name"] for model in results["models"]]
        base = results.get("base", names[0] if names else None)
        base_means = {options: _cluster_mean(results, base, options) for options in (True, False)}
        for model in results["models"]:
            name = model["name"]
            means = {options: _cluster_mean(results, name, options) for options in (True, False)}
            delta = {options: None if means[options] is None or base_means[options] is None
                     else round(means[options] - base_means[options], 2) for options in (True, False)}
            records = [r for r in results["records"] if r["model"] == name]
            scored = sum(r["scores"].get("n", 0) for r in records)
            seconds = sum(r.get("seconds", 0.0) for r in records)
            out.append({"eval": path.parent.name, "model": name, "base": results.get("base"),
                        "method": model.get("method"), "cluster": results.get("heldout_cluster"),
                        "mean": means[True], "delta_vs_base": delta[True],
                        "mean_no_options": means[False], "delta_no_options": delta[False],
                        "row_template_pairs": scored, "templates": results.get("templates"),
                        "limit": results.get("limit"), "seconds": round(seconds, 1),
                        "pairs_per_s": scored / seconds if seconds else None})
    return out


def _fmt(value: Any, spec: str = ",.0f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown page."""
    title = "DRY RUN on the CPU: no GPU figures" if summary["dry_run"] else "bench/gpu.sh"
    lines = [f"# GPU summary ({title})", "",
             f"GPU: {summary['gpu'] or 'none'}; peak used for MFU: {summary['peak_note']}", ""]
    lines += ["| run | method | steps | batch × max_len | tokens | train s | job s | tokens/s "
              "| steady tokens/s | MFU | MFU non-emb. | peak MiB | loss first → last |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in summary["runs"]:
        loss = (f"{r['first_loss']:.3f} → {r['final_loss']:.3f}"
                if r["first_loss"] is not None and r["final_loss"] is not None else "n/a")
        lines.append(
            f"| {r['run']} | {r['method']} | {r['steps']} | {r['batch_size']} × {r['max_length']} "
            f"| {r['tokens_seen']:,} | {_fmt(r['train_seconds'], '.1f')} | {_fmt(r['wall_time_s'], '.0f')} "
            f"| {_fmt(r['tokens_per_s'])} | {_fmt(r['tokens_per_s_steady'])} | {_fmt(r['mfu'], '.1%')} "
            f"| {_fmt(r['mfu_nonembedding'], '.1%')} | {_fmt(r['peak_memory_mib'], ',.0f')} | {loss} |")
    bases = sorted({r["train_seconds_basis"] for r in summary["runs"] if r["train_seconds_basis"]})
    lines += ["", f"train s: {'; '.join(bases) or 'n/a'}. "
              "job s: `wall_time_s` (load, tokenize, train, save). "
              "tokens: real (non-padding) tokens trained. Peak memory: "
              + "; ".join(sorted({r["peak_memory_kind"] for r in summary["runs"]})) + ".",
              "",
              "MFU = (4 N + 2 N_trainable) × tokens/s ÷ peak dense bf16 FLOP/s: forward 2N, backward 2N for "
              "activation gradients (through every layer, frozen or not) and 2 N_trainable for weight "
              "gradients; 6N for full fine-tuning, ~4N for LoRA. `MFU` counts every parameter (charges the "
              "vocabulary matrices at every position: upper bound); `MFU non-emb.` leaves the vocabulary "
              "matrices out (lower bound). gpu_summary.json also has the 6N convention (`mfu_6n`)."]
    if summary["evals"]:
        lines += ["", "## Zero-shot on the held-out cluster (acc)", "",
                  "| eval | model | method | cluster mean, OPTIONS | Δ vs base | no OPTIONS | Δ vs base "
                  "| (row, template) pairs | s | pairs/s |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in summary["evals"]:
            lines.append(f"| {e['eval']} | {Path(e['model']).name} | {e['method'] or 'untuned'} "
                         f"| {_fmt(e['mean'], '.1f')} | {_fmt(e['delta_vs_base'], '+.1f')} "
                         f"| {_fmt(e.get('mean_no_options'), '.1f', '-')} "
                         f"| {_fmt(e.get('delta_no_options'), '+.1f', '-')} "
                         f"| {e['row_template_pairs']:,} | {e['seconds']:.1f} "
                         f"| {_fmt(e['pairs_per_s'], '.1f')} |")
        lines += ["", "Full tables: `eval-*/report.md`."]
    if summary["timeline"]:
        lines += ["", "## Where the time went", "", "| phase | s |", "|---|---:|"]
        lines += [f"| {p} | {s} |" for p, s in summary["timeline"]]
        lines.append(f"| **total (to the summary)** | **{sum(s for _, s in summary['timeline'])}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or run.json files")
    parser.add_argument("--out", type=Path, help="write gpu_summary.json and gpu_summary.md here")
    parser.add_argument("--logs", type=Path, help="folder with train-NAME.log files (bench/gpu.sh's logs/)")
    parser.add_argument("--env", type=Path, help="bench/gpu.sh's env.json (GPU name, versions)")
    parser.add_argument("--timeline", type=Path, help="bench/gpu.sh's timeline.tsv (seconds per phase)")
    parser.add_argument("--evals", type=Path, help="folder holding eval-*/results.json")
    parser.add_argument("--gpu-name", help="the GPU (default: env.json, else torch.cuda.get_device_name)")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    args = parser.parse_args(argv)

    env = json.loads(args.env.read_text(encoding="utf-8")) if args.env and args.env.is_file() else {}
    gpu = args.gpu_name or env.get("gpu") or (detect_gpu() if "gpu" not in env else None)
    if args.peak_tflops:
        peak, note = args.peak_tflops, f"{args.peak_tflops:g} TFLOP/s (given)"
    else:
        peak, note = peak_tflops(gpu)
    print(f"GPU: {gpu or 'none'}; peak for MFU: {note}", file=sys.stderr)
    missing = [str(p) for p in args.runs if not (p / "run.json" if p.is_dir() else p).is_file()]
    if missing:
        print(f"gpu_summary: no run.json in {', '.join(missing)} (a run that did not finish?)",
              file=sys.stderr)
        return 1
    timeline = []
    if args.timeline and args.timeline.is_file():
        for line in args.timeline.read_text(encoding="utf-8").splitlines():
            phase, _, seconds = line.rpartition("\t")
            if phase:
                timeline.append((phase, int(seconds)))
    summary = {
        "kind": "flan-builder GPU summary", "dry_run": bool(env.get("dry_run", gpu is None)),
        "gpu": gpu, "peak_bf16_tflops": peak, "peak_note": note, "env": env,
        "formula": "mfu = (4 N_total + 2 N_trainable) * tokens_seen / train_seconds / peak; "
                   "mfu_nonembedding: N without the vocabulary matrices; "
                   "mfu_6n = 6 N_total * tokens / s / peak",
        "runs": [summarise_run(p, args.logs, peak) for p in args.runs],
        "evals": summarise_evals(args.evals) if args.evals else [],
        "timeline": timeline,
    }
    text = markdown(summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (args.out / "gpu_summary.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

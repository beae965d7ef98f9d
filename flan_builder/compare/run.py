"""``flan compare``: train every method on one built dataset, evaluate each on the same held-out rows
beside the untuned base and its in-context learning, and write one report.

Layout of the output folder (the recipe's ``output``)::

    recipes/<method>.yaml   the recipe each method trains with (`flan train recipes/lora.yaml` reruns it)
    runs/<method>/          each method's `flan train` run (written atomically by flan train)
    logs/<method>.log       its training output
    eval/<name>/            each model's `flan eval` report: base, icl-k1, icl-k4, <method>
    report.md, report.png, results.json   the comparison (results.json written last)

Each piece is atomic and the report is rewritten from the pieces, so a stopped comparison started
again skips every finished method and evaluation (a run whose settings differ from the recipe's is
an error, not silently reused) and resumes an interrupted one from its last checkpoint.

Every method trains in its own ``flan train`` process: peak memory is the process's own (on a CPU,
its maximum resident set, which a process never lowers), and one method's failure is reported in
the table instead of ending the comparison.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flan_builder.atomic import write_text_atomic
from flan_builder.compare.methods import Comparison, hyperparameters
from flan_builder.errors import FlanError
from flan_builder.training.recipe import VIRTUAL_TOKEN_METHODS, Recipe
from flan_builder.workdir import partial_dir

FLAT_DROP = 0.01  # a loss that fell by less than 1% from the first quarter of the log to the last
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# PEFT models that add soft tokens run one full sequence per option, their soft tokens included;
# prefix tuning adds key/value positions instead of tokens.
SOFT_TOKEN_METHODS = ("prompt_tuning", "p_tuning")


# -- did it train? ---------------------------------------------------------------------------------

def training_status(curve: list[list[float]]) -> dict[str, Any]:
    """From a run's logged losses: trained, or did not (a NaN/inf loss, or a loss that did not fall)."""
    points = [(int(step), float("nan") if loss is None else float(loss)) for step, loss in curve]
    bad = next(((step, loss) for step, loss in points if not math.isfinite(loss)), None)
    if bad is not None:
        return {"trained": False, "reason": "nan", "status": f"did not train: loss {bad[1]} at step {bad[0]}"}
    losses = [loss for _, loss in points]
    if len(losses) < 2:
        return {"trained": None, "reason": "unknown",
                "status": f"{len(losses)} logged loss(es): too few to judge (log more often)"}
    quarter = max(1, len(losses) // 4)
    first, last = statistics.fmean(losses[:quarter]), statistics.fmean(losses[-quarter:])
    drop = (first - last) / abs(first) if first else 0.0
    change = -100 * drop
    moved = f"{first:.3f} -> {last:.3f}, {'±0.0' if abs(change) < 0.05 else f'{change:+.1f}'}%"
    if drop < FLAT_DROP:
        reason = "rose" if drop < -FLAT_DROP else "flat"
        return {"trained": False, "reason": reason, "status": f"did not train: loss {reason} ({moved})",
                "loss_first": first, "loss_last": last}
    return {"trained": True, "reason": None, "status": f"trained: loss {moved}", "loss_first": first,
            "loss_last": last}


# -- training ------------------------------------------------------------------------------------

def _difference(theirs: Any, mine: Any, where: str) -> str | None:
    """The first setting that differs between a finished run's recipe and this one, as text."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for key in sorted(set(theirs) | set(mine)):
            found = _difference(theirs.get(key), mine.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if theirs != mine:
        return f"{where}: {theirs!r} there, {mine!r} here"
    return None


def _check_finished_run(run: Path, recipe: Recipe, manifest: dict[str, Any],
                        dataset_hash: str | None) -> None:
    from flan_builder.training.job import training_precision

    mine, theirs = recipe.to_json(), dict(manifest["recipe"])
    # Precision is compared as trained, not as asked: "auto" means another thing on another
    # machine, and runs before run.json recorded it trained in fp32 on a CPU.
    mine["train"] = {k: v for k, v in mine["train"].items() if k != "precision"}
    theirs["train"] = {k: v for k, v in (theirs.get("train") or {}).items() if k != "precision"}
    for key in ("model", "heldout", "dataset", "peft", "sft", "train"):
        found = _difference(theirs.get(key), mine.get(key), key)
        if found:
            raise FlanError(f"{run} was trained with other settings ({found}); delete it to train it again "
                            "with these, or give the comparison another output")
    # before run.json recorded it: fp32 on a CPU; on a GPU bf16 unless the run's own recipe said no
    trained = manifest.get("precision") or (
        "fp32" if str(manifest.get("device", "cpu")).startswith("cpu")
        else "bf16" if (manifest["recipe"].get("sft") or {}).get("bf16", True) else "fp32")
    wanted = training_precision(recipe)
    if trained != wanted:
        raise FlanError(f"{run} was trained in {trained}, and this comparison trains in {wanted}; "
                        f"add --set train.precision={trained} to use it, or delete it to train it again")
    theirs = (manifest.get("dataset") or {}).get("content_hash", {}).get("all")
    if theirs != dataset_hash:
        raise FlanError(f"{run} was trained on another build of {recipe.dataset_path} (content hash "
                        f"{str(theirs)[:16]}, now {str(dataset_hash)[:16]}); delete it to train it again")


def _run_logged(command: list[str], log: Path) -> int:
    """Run a command, its output shown as it comes and kept in ``log``; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        try:
            while chunk := os.read(process.stdout.fileno(), 65536):
                sink.write(chunk)
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        except BaseException:
            process.kill()  # a Ctrl-C here must not leave the training running on its own
            raise
        finally:
            process.stdout.close()
            code = process.wait()
    return code


def train_method(method: str, comparison: Comparison, out: Path, dataset_hash: str | None) -> dict[str, Any]:
    """One method's run: reused when finished (with the same settings), else `flan train` in its own
    process, resumed from its last checkpoint when an earlier attempt was stopped."""
    from flan_builder.training.job import RUN_MANIFEST, last_checkpoint

    recipe = comparison.recipes[method]
    run = Path(recipe.output)
    if (run / RUN_MANIFEST).is_file():
        manifest = json.loads((run / RUN_MANIFEST).read_text(encoding="utf-8"))
        _check_finished_run(run, recipe, manifest, dataset_hash)
        print(f"flan compare: {method}: finished earlier, skipped ({run})", file=sys.stderr)
        return {"manifest": manifest, "fresh": False}
    recipe_file = out / "recipes" / f"{method}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(recipe_file, yaml.safe_dump(comparison.raw[method], sort_keys=False))
    work = partial_dir(run)
    flags = []
    if work.exists():  # an earlier attempt stopped: continue it, or start over where it left nothing usable
        flags = ["--resume"] if last_checkpoint(work) is not None else ["--overwrite"]
    print(f"flan compare: {method}: training ({' '.join(flags) or 'from the start'}) -> {run}",
          file=sys.stderr)
    log = out / "logs" / f"{method}.log"
    code = _run_logged([sys.executable, "-m", "flan_builder.cli", "train", str(recipe_file), *flags], log)
    if code != 0 or not (run / RUN_MANIFEST).is_file():
        print(f"flan compare: warning: {method} failed to train (exit code {code}); its output is in {log}. "
              "Run the comparison again to retry it", file=sys.stderr)
        return {"manifest": None, "fresh": True, "failed": f"training failed (exit code {code}; see {log})"}
    return {"manifest": json.loads((run / RUN_MANIFEST).read_text(encoding="utf-8")), "fresh": True}


def weights_on_disk(run: Path) -> int:
    """Bytes of the weights a run saved (an adapter, or a whole model for full tuning)."""
    return sum(p.stat().st_size for p in run.iterdir()
               if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin")


# -- evaluation ----------------------------------------------------------------------------------

def _row_keys(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> set[tuple[str, str, int]]:
    return {(task, template, len(rows)) for (task, template), rows in groups.items()}


def evaluate_one(name: str, model: str, shots: int, comparison: Comparison, dataset_dir: Path, out: Path,
                 groups: dict[tuple[str, str], list[dict[str, Any]]], stale: bool,
                 dataset_hash: str | None) -> dict[str, Any]:
    """``flan eval`` of one model on the comparison's rows (reused when done on the same rows)."""
    from flan_builder.evaluation.evaluator import evaluate_models
    from flan_builder.evaluation.suite import EvalConfig

    settings = comparison.eval
    folder = out / "eval" / name
    done = folder / "results.json"
    if done.is_file() and stale:  # the model was trained again since: its scores are for the old one
        shutil.rmtree(folder)
    elif done.is_file():
        results = json.loads(done.read_text(encoding="utf-8"))
        rows = {(r["task"], r["template"], r["scores"]["n"]) for r in results["records"]}
        same = (results.get("dataset_hash") == dataset_hash and results.get("shots", 0) == shots
                and (not shots or results.get("shots_from") == settings["shots_from"])
                and results["models"][0]["name"] == model and rows == _row_keys(groups))
        if not same:
            raise FlanError(f"{folder} holds an evaluation on other rows or settings than this comparison's; "
                            "delete it to evaluate again")
        print(f"flan compare: {name}: evaluated earlier, skipped ({folder})", file=sys.stderr)
        return results
    print(f"flan compare: {name}: evaluating -> {folder}", file=sys.stderr)
    return evaluate_models(EvalConfig(
        models=[model], data=dataset_dir, out=folder, limit=settings["limit"],
        templates=settings["templates"], template_filter=settings["template"] or None,
        tasks=settings["tasks"] or None, shots=shots,
        shots_from=settings["shots_from"], batch_size=settings["batch_size"]))


def score_of(results: dict[str, Any]) -> dict[str, Any]:
    """The held-out score: the mean over datasets of each dataset's mean over templates, and the spread
    (the mean over datasets of the standard deviation over templates)."""
    datasets = [d for d in results["datasets"] if d["options"]]
    clusters = [c for c in results["clusters"] if c["options"]]
    scored = [d for d in datasets if any(c["cluster"] == d["cluster"] for c in clusters)]
    return {
        "metric": "/".join(sorted({d["metric"] for d in scored})) or None,
        "mean": statistics.fmean(c["mean"] for c in clusters) if clusters else None,
        "spread": statistics.fmean(d["std"] for d in scored) if scored else None,
        "datasets": {d["task"]: {"metric": d["metric"], "mean": d["mean"], "std": d["std"], "best": d["best"],
                                 "worst": d["worst"], "templates": d["templates"]} for d in datasets},
        "eval_wall_time_s": results.get("wall_time_s"),
    }


def inference_tokens(groups: dict[tuple[str, str], list[dict[str, Any]]], evaluations: dict[str, Any],
                     tokenizer: Any, separator: str, shot_maker: Any = None, soft_tokens: int = 0,
                     shared_prefix: bool = True) -> dict[str, float]:
    """Tokens run through the model per held-out row, as the scorer runs them: a classification row's
    context once and each option's own tokens after it (a model with soft tokens: one full sequence
    per option, its soft tokens included); a generation row's prompt and its new-token budget. Also the
    longest sequence, for the context check."""
    from flan_builder.lm.scoring import encode_row

    per_row, longest = [], 0
    for (task, template), rows in groups.items():
        evaluation, sep = evaluations[task], separator
        if shot_maker is not None:
            rows, sep, _ = shot_maker.prompts(task, template, rows, True, separator)
        for row in rows:
            if evaluation["output_type"] == "multiple_choice":
                encoded = encode_row(tokenizer, row["prompt"], row["options"], sep)
                context, options = len(encoded.prompt), [len(o) for o in encoded.options]
                per_row.append(context + sum(options) if shared_prefix else
                               sum(context + o + soft_tokens for o in options))
                longest = max(longest, context + max(options) + soft_tokens)
            else:
                prompt = len(tokenizer(row["prompt"])["input_ids"]) + soft_tokens
                per_row.append(prompt + evaluation["max_new_tokens"])
                longest = max(longest, per_row[-1])
    return {"tokens_per_row": statistics.fmean(per_row), "longest": longest, "rows": len(per_row)}


def context_length(source: Any) -> int | None:
    """The model's context window (max_position_embeddings), where its config says."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.location, **source.pretrained_kwargs())
    value = getattr(config.get_text_config(), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


# -- the whole comparison ------------------------------------------------------------------------

def check_folder(out: Path) -> None:
    """The output must be a comparison's folder (or new): never a training run or anything else."""
    if not out.exists():
        return
    ours = {"recipes", "runs", "logs", "eval", "report.md", "report.png", "results.json"}
    if not out.is_dir() or any(p.name not in ours and not p.name.startswith(".") for p in out.iterdir()):
        raise FlanError(f"{out} exists and is not a comparison's folder (it holds other files); give the "
                        "comparison another output (--output)")

def run_comparison(comparison: Comparison) -> dict[str, Any]:
    """Train, evaluate, report; every finished piece of an earlier run reused."""
    from flan_builder.compare.report import write_report
    from flan_builder.evaluation.rows import load_heldout, task_evaluations
    from flan_builder.evaluation.shots import ShotMaker
    from flan_builder.manifest import read_dataset_manifest
    from flan_builder.models import load_tokenizer, materialise_model, resolve_model
    from flan_builder.training.job import check_recipe, ensure_dataset

    started = time.perf_counter()
    base = comparison.base
    out = Path(base.output)
    check_folder(out)
    for recipe in comparison.recipes.values():  # a bad value fails now, not after an hour of training
        check_recipe(recipe)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = ensure_dataset(base)
    manifest = read_dataset_manifest(dataset_dir)
    dataset_hash = manifest.get("content_hash", {}).get("all")
    settings = comparison.eval
    groups, _ = load_heldout(dataset_dir, tasks=settings["tasks"] or None,
                             template_filter=settings["template"] or None, templates=settings["templates"],
                             limit=settings["limit"])
    evaluations = task_evaluations(manifest, {task for task, _ in groups})
    separator = manifest.get("separator", "\n\n")
    # An alias is saved as a model folder once, here, so that no method's peak memory includes it.
    source = materialise_model(resolve_model(base.model))
    tokenizer = load_tokenizer(source)
    limit = context_length(source)

    trained = {method: train_method(method, comparison, out, dataset_hash) for method in comparison.methods}

    rows: list[dict[str, Any]] = []
    zero_shot = inference_tokens(groups, evaluations, tokenizer, separator)
    base_results = evaluate_one("base", base.model, 0, comparison, dataset_dir, out, groups, False,
                                dataset_hash)
    rows.append({"name": "base", "kind": "untuned", "label": "untuned base (zero-shot)", "shots": 0,
                 "status": "untuned", "trainable": 0, "trainable_pct": 0.0,
                 "inference_tokens_per_row": zero_shot["tokens_per_row"], "score": score_of(base_results),
                 "eval": str(out / "eval" / "base")})
    for k in [k for k in settings["shots"] if k > 0]:
        name = f"icl-k{k}"
        maker = ShotMaker(manifest, k, settings["shots_from"], dataset_dir)
        cost = inference_tokens(groups, evaluations, tokenizer, separator, maker)
        row = {"name": name, "kind": "in_context", "label": f"in-context, k={k} ({settings['shots_from']})",
               "shots": k, "trainable": 0, "trainable_pct": 0.0,
               "inference_tokens_per_row": cost["tokens_per_row"],
               "longest_prompt_tokens": cost["longest"], "eval": str(out / "eval" / name)}
        if limit is not None and cost["longest"] > limit:
            row.update(status=f"not run: the longest {k}-shot sequence is {cost['longest']} tokens, over the "
                              f"model's context of {limit}", score=None)
        else:
            results = evaluate_one(name, base.model, k, comparison, dataset_dir, out, groups, False,
                                   dataset_hash)
            where = "the training mixture" if settings["shots_from"] == "mixture" else \
                "each task's own train split"
            row.update(status=f"{k} exemplar{'s' * (k != 1)} from {where}", score=score_of(results))
        rows.append(row)

    for method in comparison.methods:
        recipe, outcome = comparison.recipes[method], trained[method]
        run = Path(recipe.output)
        row = {"name": method, "kind": "tuned", "label": method, "method": method, "run": str(run),
               "hyperparameters": hyperparameters(recipe), "source": comparison.settings[method]["source"]}
        if outcome["manifest"] is None:
            row.update(status=outcome["failed"], trained=False, score=None)
            rows.append(row)
            continue
        m = outcome["manifest"]
        status = training_status(m.get("loss_curve") or [])
        soft = recipe.peft["num_virtual_tokens"] if method in SOFT_TOKEN_METHODS else 0
        cost = inference_tokens(groups, evaluations, tokenizer, separator, soft_tokens=soft,
                                shared_prefix=method not in VIRTUAL_TOKEN_METHODS)
        row.update(
            status=status["status"], trained=status["trained"], trainable=m["parameters"]["trainable"],
            total_parameters=m["parameters"]["total"], trainable_pct=100 * m["parameters"]["fraction"],
            peak_memory_mb=m.get("peak_memory_mb"), wall_time_s=m.get("wall_time_s"),
            tokens_seen=m.get("tokens_seen"), steps=m.get("steps"),
            # runs before run.json recorded it trained in fp32 on a CPU (bf16 on a GPU)
            precision=m.get("precision"),
            tokens_per_s=m["tokens_seen"] / m["wall_time_s"] if m.get("wall_time_s") else None,
            final_loss=_finite(m.get("final_loss")), loss_first=status.get("loss_first"),
            loss_last=status.get("loss_last"), weights_bytes=weights_on_disk(run),
            inference_tokens_per_row=cost["tokens_per_row"], eval=str(out / "eval" / method),
        )
        if status["reason"] == "nan":  # NaN weights score nothing: reported, not evaluated
            row["score"] = None
        else:
            results = evaluate_one(method, str(run), 0, comparison, dataset_dir, out, groups,
                                   outcome["fresh"], dataset_hash)
            row["score"] = score_of(results)
        rows.append(row)

    steps = base.sft["max_steps"]
    results = {
        "kind": "flan-builder PEFT comparison",
        "format_version": 1,
        "recipe": comparison.source, "overrides": comparison.overrides,
        "model": base.model, "model_source": source.describe(), "context_length": limit,
        "heldout_cluster": base.heldout, "data": str(dataset_dir), "dataset_hash": dataset_hash,
        "training": {"max_steps": steps, "batch_size": base.sft.get("per_device_train_batch_size"),
                     "gradient_accumulation_steps": base.sft.get("gradient_accumulation_steps"),
                     "max_length": base.sft.get("max_length"), "seed": base.sft.get("seed"),
                     "lr_scheduler_type": base.sft.get("lr_scheduler_type"),
                     "warmup_steps": base.sft.get("warmup_steps"), "padding_free": False,
                     "flat_below": FLAT_DROP},
        "eval": {**settings, "rows": zero_shot["rows"], "datasets": sorted({t for t, _ in groups}),
                 "templates_evaluated": len(groups), "separator": separator},
        "methods": comparison.methods,
        "rows": rows,
        "wall_time_s_this_invocation": round(time.perf_counter() - started, 1),
    }
    write_report(results, out)
    failed = [r["name"] for r in rows if r["kind"] == "tuned" and r["status"].startswith("training failed")]
    results["failed"] = failed
    return results


def _finite(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None

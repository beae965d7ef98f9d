"""``flan eval``: every model on exactly the same held-out rows, resumable, one report.

Results are appended to ``.<out>.partial/results.jsonl`` as each (model, task, template,
options) finishes, so an interrupted evaluation resumes where it stopped. The report
(``results.json``, ``report.md``, ``report.png``) is written atomically at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# Generation metric (local evaluate module, Hub name, keys) and budget by cluster.
GENERATION = {
    "translation": ("flan_sacrebleu", "sacrebleu", ("bleu", "chrf"), 128),
    "summarization": ("flan_rouge", "rouge", ("rougeL", "rouge1", "rouge2"), 128),
    "struct_to_text": ("flan_rouge", "rouge", ("rougeL", "rouge1", "rouge2"), 96),
}
QA = ("flan_qa", "squad", ("exact_match", "f1"), 32)
# Tabular regression (a number as the answer, e.g. diabetes): error metrics, lower is better. No
# Hub counterpart reads numbers out of generated text, so it is local only.
REGRESSION = ("flan_regression", None, ("rmse", "mae", "unparsable"), 12)
LOWER_IS_BETTER = {"rmse", "mae"}
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_number(text: str) -> float | None:
    """The first number in a generated answer ('151', '151.5 points', ' -3'), else None."""
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else None


def _is_regression(rows: list[dict[str, Any]], cluster: str) -> bool:
    """A tabular task whose references are plain numbers: regression, not QA."""
    def number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    return cluster == "tabular" and all(row["references"] and number(row["references"][0]) for row in rows)


@dataclass
class EvalConfig:
    models: list[str]
    data: Path
    out: Path
    limit: int | None = None
    templates: int | None = None
    template_filter: list[str] | None = None
    options: tuple[bool, ...] = (True,)
    batch_size: int | str = "auto"
    metric_from_hub: bool = False
    overwrite: bool = False
    tasks: list[str] | None = None


def load_heldout(config: EvalConfig) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], dict[str, Any]]:
    """(task, template) -> rows of the held-out split, after --limit / --templates filters."""
    from datasets import load_from_disk

    from flan_builder.training.data import read_dataset_manifest

    manifest = read_dataset_manifest(config.data)
    dataset = load_from_disk(str(config.data))
    if "heldout" not in dataset:
        raise FlanError(f"{config.data} has no held-out split (built with --heldout none?); "
                        "build one with `flan build --heldout CLUSTER`")
    rows = [r for r in dataset["heldout"].to_list() if not r["inverted"]]
    if config.tasks:
        rows = [r for r in rows if r["task"] in config.tasks]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    templates_seen: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        seen = templates_seen[row["task"]]
        if row["template_id"] not in seen:
            seen.append(row["template_id"])
        groups[(row["task"], row["template_id"])].append(row)
    chosen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task, template_ids in templates_seen.items():
        if config.template_filter:
            template_ids = [t for t in template_ids if any(f in t for f in config.template_filter)]
        for template_id in template_ids[: config.templates]:
            group = sorted(groups[(task, template_id)], key=lambda r: r["source_index"])
            chosen[(task, template_id)] = group[: config.limit]
    if not chosen:
        raise FlanError(f"no held-out rows match the filters (--templates / --template / --task) in "
                        f"{config.data}")
    return chosen, manifest


def _batches(items: list[Any], size: int | str, length: Any) -> list[list[Any]]:
    """Sort by length (longest first: an out-of-memory shows at once) and cut into batches."""
    ordered = sorted(items, key=length, reverse=True)
    if size != "auto":
        return [ordered[i: i + int(size)] for i in range(0, len(ordered), int(size))]
    budget = 8192  # tokens per batch (rows x longest row) for 'auto'
    batches, current = [], []
    for item in ordered:
        if current and (len(current) + 1) * length(current[0]) > budget:
            batches.append(current)
            current = []
        current.append(item)
    return batches + ([current] if current else [])


def score_classification(model: Any, tokenizer: Any, rows: list[dict[str, Any]], separator: str,
                         use_options: bool, batch_size: int | str) -> dict[str, Any]:
    """acc (summed log-likelihood) and acc_norm (per character of the option), as lm-eval does."""
    from flan_builder.evaluation.scoring import encode_row, score_rows

    encoded = [(row, encode_row(tokenizer, row["prompt"] if use_options else row["input"],
                                row["options"], separator)) for row in rows]
    correct = correct_norm = 0
    for batch in _batches(encoded, batch_size, lambda item: len(item[1].prompt)):
        scores = score_rows(model, [e for _, e in batch], tokenizer.pad_token_id)
        for (row, _), option_scores in zip(batch, scores, strict=True):
            # per character of the option itself, as lm-evaluation-harness normalises acc_norm
            norm = [s / max(len(o), 1) for s, o in zip(option_scores, row["options"], strict=True)]
            gold = row["answer_index"]
            correct += int(max(range(len(option_scores)), key=option_scores.__getitem__) == gold)
            correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == gold)
    n = len(rows)
    return {"acc": 100 * correct / n, "acc_norm": 100 * correct_norm / n, "n": n}


def generate_greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                    batch_size: int | str) -> list[str]:
    """Greedy continuations of ``prompts`` (in their order), batched by length with left padding."""
    import torch

    predictions: dict[int, str] = {}
    tokenizer.padding_side = "left"
    for batch in _batches(list(enumerate(prompts)), batch_size, lambda item: len(item[1])):
        inputs = tokenizer([p for _, p in batch], return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (index, _), text in zip(batch, texts, strict=True):
            predictions[index] = text.strip()
    return [predictions[i] for i in range(len(prompts))]


def score_generation(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cluster: str,
                     use_options: bool, batch_size: int | str, from_hub: bool) -> dict[str, Any]:
    """Greedy decoding, left-padded batches, then the cluster's metric."""
    import evaluate

    local, hub, keys, max_new = REGRESSION if _is_regression(rows, cluster) else GENERATION.get(cluster, QA)
    from_hub = from_hub and hub is not None
    ordered = generate_greedy(model, tokenizer, [row["prompt"] if use_options else row["input"]
                                                 for row in rows], max_new, batch_size)
    metric = evaluate.load(hub if from_hub else str(METRICS_DIR / local))
    references = [row["references"] or [row["target"]] for row in rows]
    if from_hub and hub == "squad":
        result = metric.compute(
            predictions=[{"id": str(i), "prediction_text": p} for i, p in enumerate(ordered)],
            references=[{"id": str(i), "answers": {"text": r, "answer_start": [0] * len(r)}}
                        for i, r in enumerate(references)])
    else:
        result = metric.compute(predictions=ordered, references=references)
    scores = {key: float(result[key]) for key in keys if key in result}
    return {**scores, "n": len(rows), "examples": ordered[:3]}


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: mean/median/best/worst/std over templates; per cluster: mean over datasets."""
    per_task: dict[tuple[str, bool, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        per_task[(record["model"], record["options"], record["task"])].append(record)
    datasets_: list[dict[str, Any]] = []
    for (model, options, task), group in sorted(per_task.items()):
        metric = group[0]["metric"]
        values = [r["scores"][metric] for r in group]
        best = min if metric in LOWER_IS_BETTER else max
        worst = max if metric in LOWER_IS_BETTER else min
        entry = {"model": model, "options": options, "task": task, "cluster": group[0]["cluster"],
                 "metric": metric, "templates": len(values), "mean": statistics.fmean(values),
                 "median": statistics.median(values), "best": best(values), "worst": worst(values),
                 "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                 "best_template": best(group, key=lambda r: r["scores"][metric])["template"]}
        if metric == "acc":
            entry["acc_norm_mean"] = statistics.fmean(r["scores"]["acc_norm"] for r in group)
        datasets_.append(entry)
    clusters: dict[tuple[str, bool, str], list[float]] = defaultdict(list)
    for entry in datasets_:
        if entry["metric"] not in LOWER_IS_BETTER:  # an error (RMSE) cannot be averaged with scores
            clusters[(entry["model"], entry["options"], entry["cluster"])].append(entry["mean"])
    return {"datasets": datasets_,
            "clusters": [{"model": m, "options": o, "cluster": c, "mean": statistics.fmean(v),
                          "datasets": len(v)} for (m, o, c), v in sorted(clusters.items())]}


def evaluate_models(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every model on the same rows; write the report atomically; return results."""
    from flan_builder.atomic import atomic_directory, check_output_free
    from flan_builder.evaluation.loading import check_model, load_for_eval
    from flan_builder.evaluation.report import write_report
    from flan_builder.progress import progress

    started = time.perf_counter()
    if config.limit is not None and config.limit < 1:
        raise FlanError("--limit must be at least 1 (rows per dataset)")
    check_output_free(config.out, config.overwrite)
    for name in config.models:
        check_model(name)
    groups, manifest = load_heldout(config)
    separator = manifest.get("separator", "\n\n")
    work = config.out.parent / f".{config.out.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "results.jsonl"
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] \
        if log_path.is_file() else []
    done = {(r["model"], r["task"], r["template"], r["options"]) for r in records}
    models_info = []
    for name in config.models:
        todo = [(key, use) for key in groups for use in config.options
                if (name, key[0], key[1], use) not in done]
        if not todo:
            models_info.append({"name": name, "resumed": True})
            continue
        model, tokenizer, info = load_for_eval(name)
        models_info.append(info)
        with progress(todo, desc=f"evaluating {Path(name).name}", unit="template") as bar:
            for (task, template), use_options in bar:
                rows = groups[(task, template)]
                first = rows[0]
                t0 = time.perf_counter()
                if first["options"]:
                    scores = score_classification(model, tokenizer, rows, separator, use_options,
                                                  config.batch_size)
                    metric = "acc"
                else:
                    scores = score_generation(model, tokenizer, rows, first["cluster"], use_options,
                                              config.batch_size, config.metric_from_hub)
                    metric = next(k for k in scores if k not in ("n", "examples"))
                record = {"model": name, "task": task, "cluster": first["cluster"], "template": template,
                          "options": use_options, "metric": metric, "scores": scores,
                          "seconds": round(time.perf_counter() - t0, 2)}
                with log_path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
                records.append(record)
        del model
    results = {
        "kind": "flan-builder evaluation",
        "data": str(config.data), "dataset_hash": manifest.get("content_hash", {}).get("all"),
        "heldout_cluster": manifest.get("heldout_cluster"),
        "models": models_info, "base": config.models[0],
        "limit": config.limit, "templates": config.templates,
        "records": [r for r in records if r["model"] in config.models],
        **_aggregate([r for r in records if r["model"] in config.models]),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    with atomic_directory(config.out, overwrite=config.overwrite) as tmp:
        write_report(results, tmp)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {config.out}/results.json, report.md, report.png", file=sys.stderr)
    return results

"""The comparison's report: one table (markdown and JSON), the hyper-parameters, and a chart of the
held-out score against the trainable fraction (marker size: peak memory)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flan_builder.atomic import write_json_atomic, write_text_atomic

COLUMNS = ("method", "status", "trainable parameters", "trainable %", "peak memory (MiB)", "tokens/s",
           "wall time (s)", "on disk (MB)", "held-out score", "spread over templates", "tokens per row")


def _num(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.3g}"


def _score(row: dict[str, Any], key: str) -> str:
    score = row.get("score")
    return "-" if not score or score.get(key) is None else f"{score[key]:.1f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per model (the untuned base, in-context learning, each tuned method)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results["rows"]:
        mb = row.get("weights_bytes")
        cells = [f"**{row['label']}**" if row["kind"] == "tuned" else row["label"], row["status"],
                 _num(row.get("trainable")), _pct(row.get("trainable_pct")), _num(row.get("peak_memory_mb")),
                 _num(row.get("tokens_per_s"), ".1f"), _num(row.get("wall_time_s")),
                 "-" if mb is None else f"{mb / 1e6:.3g}", _score(row, "mean"), _score(row, "spread"),
                 _num(row.get("inference_tokens_per_row"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_table(results: dict[str, Any]) -> str:
    """Markdown: each held-out dataset's mean ± std over templates, per model."""
    tasks = results["eval"]["datasets"]
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for row in results["rows"]:
        found = (row.get("score") or {}).get("datasets", {})
        cells = [f"{found[t]['mean']:.1f} ± {found[t]['std']:.1f}" if t in found else "-" for t in tasks]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hyperparameter_table(results: dict[str, Any]) -> str:
    """Markdown: what each method trained with, and the paper it comes from."""
    lines = ["| method | learning rate | optimiser | weight decay | adapter | precision | from |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if row["kind"] != "tuned":
            continue
        h = dict(row["hyperparameters"])
        rate, optim, decay = h.pop("learning_rate"), h.pop("optim"), h.pop("weight_decay")
        shape = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in h.items()) \
            or "every weight"
        lines.append(f"| {row['label']} | {rate:g} | {optim} | {decay:g} | {shape} | "
                     f"{row.get('precision') or '-'} | {row['source']} |")
    return "\n".join(lines)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    tuned = [r for r in results["rows"]
             if r["kind"] == "tuned" and (r.get("score") or {}).get("mean") is not None]
    memory = [r.get("peak_memory_mb") or 0 for r in tuned]
    top = max(memory or [1]) or 1
    for row, mb in zip(tuned, memory, strict=True):
        size = 40 + 900 * mb / top  # area proportional to peak memory
        hollow = row.get("trained") is False
        ax.scatter([max(row["trainable_pct"], 1e-4)], [row["score"]["mean"]], s=size, alpha=0.6,
                   facecolors="none" if hollow else None, edgecolors="tab:blue", linewidths=1.5)
        ax.annotate(row["label"] + (" (did not train)" if hollow else ""),
                    (max(row["trainable_pct"], 1e-4), row["score"]["mean"]), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 3))])
    for row in results["rows"]:
        if row["kind"] != "tuned" and (row.get("score") or {}).get("mean") is not None:
            ax.axhline(row["score"]["mean"], color="tab:gray", linestyle=next(styles, "--"), linewidth=1,
                       label=f"{row['label']}: {row['score']['mean']:.1f} "
                             f"({row['inference_tokens_per_row']:,.0f} tokens/row)")
    ax.set_xscale("log")
    ax.margins(x=0.2)  # room for the labels of the smallest and largest
    ax.set_xlabel("trainable parameters (% of the model, log scale)")
    metric = next((r["score"]["metric"] for r in results["rows"] if (r.get("score") or {}).get("metric")),
                  "score")
    ax.set_ylabel(f"held-out {metric} (mean over datasets and templates)")
    ax.set_title(f"{Path(str(results['model'])).name}: held-out {results['heldout_cluster']}, "
                 f"{results['training']['max_steps']} steps per method\n(marker area: peak memory; "
                 f"largest {top:,.0f} MiB)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def write_report(results: dict[str, Any], folder: Path) -> None:
    """report.md, report.png and results.json into ``folder`` (results.json last: a complete report)."""
    t, e = results["training"], results["eval"]
    shots = [k for k in e["shots"] if k > 0]
    header = (
        f"# Tuning methods and in-context learning on held-out `{results['heldout_cluster']}`\n\n"
        f"Model `{results['model']}` ({results['model_source']}). Data `{results['data']}` (hash "
        f"{str(results['dataset_hash'])[:16]}). Every method trained {t['max_steps']} steps of "
        f"{t['batch_size']} rows (max_length {t['max_length']}, {t['lr_scheduler_type']} schedule, seed "
        f"{t['seed']}, padded batches): the same rows in the same order. Each model is scored on the same "
        f"{e['rows']} held-out prompts ({', '.join(e['datasets'])}; {e['limit'] or 'all'} rows per dataset, "
        f"{e['templates'] or 'all'} templates each, {e['templates_evaluated']} (dataset, template) pairs) "
        f"by rank classification with OPTIONS. In-context rows are the untuned model with k exemplars "
        f"({', '.join(map(str, shots)) or 'none'}) from "
        f"{'the training mixture' if e['shots_from'] == 'mixture' else 'each task’s own train split'}.\n\n"
        "Columns: *held-out score* is the mean over datasets of each dataset's mean over templates; *spread* "
        "the mean over datasets of the standard deviation over templates; *tokens/s* tokens trained on over "
        "the run's wall time (loading and saving included); *peak memory* the training process's own peak "
        "(GPU: allocated; CPU: resident set, the model and data included); *on disk* the weights the run "
        "saved (an adapter, or the whole model); *tokens per row* what scoring one held-out row runs through "
        "the model (the context once and each option's tokens; soft-token methods: one sequence per option "
        "with their soft tokens). A method whose logged loss is NaN, or fell by less than "
        f"{100 * t['flat_below']:.0f}% from the first quarter of its log to the last, is marked *did not "
        "train* (a NaN run is not evaluated).\n\n")
    text = (header + table(results) + "\n\n![held-out score against trainable parameters](report.png)\n\n"
            "## Per dataset (mean ± std over templates)\n\n" + dataset_table(results) + "\n\n"
            "## Hyper-parameters (each method's paper; the schedule, steps and batch are shared)\n\n"
            + hyperparameter_table(results) + "\n")
    write_text_atomic(folder / "report.md", text)
    _chart(results, folder / "report.png")
    write_json_atomic(folder / "results.json", json.loads(json.dumps(results, default=str)))

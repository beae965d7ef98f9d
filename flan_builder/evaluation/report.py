"""The evaluation report: results.json, a markdown table (base, tuned, difference), a chart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flan_builder.atomic import write_json_atomic
from flan_builder.evaluation.metrics import lower_is_better


def model_label(name: str) -> str:
    """A model's short name for tables: the last part of each path (also inside a proxy's name)."""
    return re.sub(r"[^\s\[\]()+,]+", lambda m: Path(m.group()).name or m.group(), name)


def _models(results: dict[str, Any]) -> list[str]:
    """The models in the order they were given (the base first)."""
    given = [m["name"] for m in results.get("models", [])]
    found = dict.fromkeys(d["model"] for d in results["datasets"])
    return [m for m in given if m in found] + [m for m in found if m not in given]


def _norm(entry: dict[str, Any] | None, bold: bool = False) -> str:
    """An acc_norm cell: the mean over templates (a cluster's: over datasets), or none."""
    if not entry or "acc_norm_mean" not in entry:
        return "" if bold else "-"
    text = f"{entry['acc_norm_mean']:.1f}"
    return f"**{text}**" if bold else text


def _unparsable(entry: dict[str, Any] | None) -> str:
    """An unparsable cell: rows with no readable answer (counted wrong) of the rows scored."""
    if not entry or "unparsable" not in entry:
        return "-"
    return f"{entry['unparsable']} / {entry['rows_scored']}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per (dataset, options), one column group per model, then the difference.

    Rank-classification datasets show acc (mean ± std, best / worst over templates) and, beside
    it, acc_norm (mean over templates); acc is the headline that differences are taken of.
    """
    models = _models(results)
    base = results["base"]
    by_key = {(d["task"], d["options"], d["model"]): d for d in results["datasets"]}
    keys = sorted({(d["task"], d["options"]) for d in results["datasets"]})
    with_norm = any("acc_norm_mean" in d for d in results["datasets"])
    # answers read out of generations (chain of thought, numbers): how many could not be read
    with_unparsable = any("unparsable" in d for d in results["datasets"])
    header = ["dataset", "options", "metric", "templates"]
    for model in models:
        header += [f"{model_label(model)} mean ± std", "best / worst", *(["acc_norm"] if with_norm else []),
                   *(["unparsable"] if with_unparsable else [])]
    others = [m for m in models if m != base]
    header += [f"Δ {model_label(m)} − {model_label(base)}" for m in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, options in keys:
        first = next(by_key[(task, options, m)] for m in models if (task, options, m) in by_key)
        cells = [task, "yes" if options else "no", first["metric"], str(first["templates"])]
        for model in models:
            d = by_key.get((task, options, model))
            cells += ([f"{d['mean']:.1f} ± {d['std']:.1f}", f"{d['best']:.1f} / {d['worst']:.1f}"]
                      if d else ["-", "-"]) + ([_norm(d)] if with_norm else []) \
                + ([_unparsable(d)] if with_unparsable else [])
        for model in others:
            a, b = by_key.get((task, options, model)), by_key.get((task, options, base))
            cells.append(f"{a['mean'] - b['mean']:+.1f}" if a and b else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for cluster in sorted({c["cluster"] for c in results["clusters"]}):
        for options in sorted({c["options"] for c in results["clusters"]}):
            found = {c["model"]: c for c in results["clusters"]
                     if c["cluster"] == cluster and c["options"] == options}
            means = {model: c["mean"] for model, c in found.items()}
            if not means:
                continue
            apart = sorted({d["task"] for d in results["datasets"]
                            if d["cluster"] == cluster and lower_is_better(d["metric"])})
            label = f"mean of datasets; {', '.join(apart)} left out: an error, not a score" if apart \
                else "mean of datasets"
            cells = [f"**{cluster} ({label})**", "yes" if options else "no", "", ""]
            for model in models:
                cells += [f"**{means[model]:.1f}**" if model in means else "-", "",
                          *([_norm(found.get(model), bold=True)] if with_norm else []),
                          *([""] if with_unparsable else [])]
            for model in others:
                cells.append(f"**{means[model] - means[base]:+.1f}**" if model in means and base in means
                             else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_table(results: dict[str, Any]) -> str:
    """Markdown: proxy-tuning's % of the base-to-direct gap closed, per dataset, cluster and template."""
    lines = ["| level | name | options | base | proxy-tuned | directly tuned | % gap closed |",
             "|---|---|---|---|---|---|---|"]
    # datasets and clusters first; the per-template rows after them, as detail
    gaps = results.get("gap_closed", [])
    for g in [g for g in gaps if g["level"] != "template"] + [g for g in gaps if g["level"] == "template"]:
        closed = "-" if g["gap_closed_pct"] is None else f"{g['gap_closed_pct']:.1f}"
        name = f"**{g['name']}**" if g["level"] == "cluster" else g["name"]
        lines.append(f"| {g['level']} | {name} | {'yes' if g['options'] else 'no'} | {g['base_score']:.1f} | "
                     f"{g['proxy_score']:.1f} | {g['direct_score']:.1f} | {closed} |")
    return "\n".join(lines)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _models(results)
    keys = sorted({(d["task"], d["options"]) for d in results["datasets"]})
    by_key = {(d["task"], d["options"], d["model"]): d for d in results["datasets"]}
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    for i, model in enumerate(models):
        xs = [k + (i - (len(models) - 1) / 2) * width for k in range(len(keys))]
        found = [by_key.get((t, o, model)) for t, o in keys]
        means = [d["mean"] if d else 0 for d in found]
        low = [d["mean"] - d["worst"] if d else 0 for d in found]
        high = [d["best"] - d["mean"] if d else 0 for d in found]
        ax.bar(xs, means, width, yerr=[low, high], capsize=3, label=model_label(model))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([t + ("" if o else "\n(no options)") for t, o in keys], fontsize=8)
    metric = {d["metric"] for d in results["datasets"]}
    ax.set_ylabel(", ".join(sorted(metric)) + " (mean over templates; bars: worst–best)")
    ax.set_title(f"zero-shot on held-out {results.get('heldout_cluster')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cot_note(results: dict[str, Any]) -> str:
    """How generation tasks scored by answer extraction were prompted and read."""
    read = any("unparsable" in d and d["metric"] == "exact_match" for d in results["datasets"])  # flan_cot
    if not read and results.get("cot", "none") == "none":
        return ""
    mode = ""
    if results.get("cot") == "zero-shot":
        mode = (" Chain of thought zero-shot (Kojima et al. 2022): \"Let's think step by step.\" after the "
                "prompt, then \"Therefore, the answer is\" and the answer.")
    return (f"{mode} Answers are read after the first \"the answer is\" / \"####\"; `unparsable` rows "
            "have none (or none of the reference's kind) and count as wrong.")


def _rows_note(limit: int | None) -> str:
    return f"{limit} rows per dataset (a seeded sample, the same for every template and model)" if limit \
        else "all rows per dataset"


def write_report(results: dict[str, Any], folder: Path) -> None:
    """results.json, report.md and report.png into ``folder``."""
    text = table(results)
    header = (f"# Zero-shot evaluation on held-out `{results.get('heldout_cluster')}`\n\n"
              f"Data: `{results['data']}` (hash {str(results.get('dataset_hash'))[:16]}), "
              f"{_rows_note(results.get('limit'))}, every selected template; "
              f"base model: `{results['base']}`. Classification: rank classification over each "
              f"option's own tokens after the prompt and the separator {results.get('separator')!r}; "
              f"`acc` takes the summed log-likelihood, `acc_norm` divides it by the option's length "
              f"in characters.{_cot_note(results)} Wall time {results['wall_time_s']} s.\n\n")
    if results.get("gap_closed"):
        text += ("\n\n## Proxy-tuning: % of the gap closed\n\n(proxy − base) / (direct − base), the "
                 f"directly tuned model being `{results['gap_closed'][0]['direct']}`.\n\n"
                 + gap_table(results))
    (folder / "report.md").write_text(header + text + "\n\n![chart](report.png)\n", encoding="utf-8")
    _chart(results, folder / "report.png")
    write_json_atomic(folder / "results.json", results)  # last: marks a complete report

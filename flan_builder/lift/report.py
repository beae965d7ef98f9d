"""The LIFT report: one table (LIFT rows beside the baselines), a chart, results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flan_builder.atomic import write_json_atomic

# Accuracy (%) published by Dinh et al. (2022), Table 2, for reference beside our own runs.
PUBLISHED: dict[str, dict[str, float]] = {
    "iris": {"LIFT/GPT-J": 96.67, "LIFT/GPT-3": 97.00, "logistic regression": 96.67},
    "wine": {"LIFT/GPT-J": 93.52, "LIFT/GPT-3": 92.59, "logistic regression": 100.00},
}


def method_label(line: dict[str, Any], results: dict[str, Any]) -> str:
    """What a summary line's method is called in the table and the chart."""
    model, names = Path(results["model"]).name, line["names"]
    big = Path(str(results.get("proxy_base"))).name
    if line["method"] == "lift":
        return f"LIFT: {model} + LoRA (names: {names})"
    if line["method"] == "base":
        return f"{model} untuned, zero-shot (names: {names})"
    if line["method"] == "proxy":
        alpha = results.get("alpha", 1.0)
        return f"proxy-tuned: {big} + {alpha:g} x (LoRA {model} - {model}) (names: {names})"
    if line["method"] == "proxy_base":
        return f"{big} untuned, zero-shot (names: {names})"
    return line["method"].replace("_", " ")


def mean_std_cell(stat: dict[str, float], digits: int = 2) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _row_order(results: dict[str, Any]) -> Any:
    """Sort key for a summary line or record: LIFT, then untuned, then baselines; modes as asked."""
    order = {"lift": 0, "base": 1, "proxy": 2, "proxy_base": 3}
    modes = {mode: i for i, mode in enumerate(results["names"])}  # names, generic, shuffled
    return lambda line: (order.get(line["method"], 4), modes.get(line["names"], -1))


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per method (LIFT first), mean ± std over seeds."""
    classification = results["task_kind"] == "classification"
    lines_ = sorted(results["summary"], key=_row_order(results))
    if classification:
        header = ["method", "accuracy % (mean ± std over seeds)", "seeds"]
    else:
        header = ["method", "RMSE (mean ± std)", "RAE (mean ± std)", "seeds", "unparsable answers"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines_:
        cells = [method_label(line, results)]
        if classification:
            cells += [mean_std_cell(line["accuracy"]), str(line["accuracy"]["n"])]
        else:
            unparsable = (f"{int(line['unparsable'])} / {int(line['answers'])}" if "answers" in line
                          else "-")
            cells += [mean_std_cell(line["rmse"]), mean_std_cell(line["rae"], 3), str(line["rmse"]["n"]),
                      unparsable]
        out.append("| " + " | ".join(cells) + " |")
    for name, value in PUBLISHED.get(results["task"], {}).items() if classification else []:
        out.append(f"| published: {name} (Dinh et al. 2022; not run here) | {value:.2f} | - |")
    return "\n".join(out)


def per_seed_table(results: dict[str, Any]) -> str:
    """Markdown: each method's score on each seed's split (a seed's LIFT score is its template mean)."""
    metric = "accuracy" if results["task_kind"] == "classification" else "rmse"
    seeds = sorted({r["seed"] for r in results["records"]})
    scores: dict[str, dict[int, float]] = {}
    for record in sorted(results["records"], key=_row_order(results)):
        if record["method"] == "baselines":
            for name, values in record["scores"].items():
                scores.setdefault(name.replace("_", " "), {})[record["seed"]] = values[metric]
        else:
            label = method_label(record, results)
            templates = record["per_template"].values()
            scores.setdefault(label, {})[record["seed"]] = sum(t[metric] for t in templates) / len(templates)
    out = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for label, by_seed in scores.items():
        out.append(f"| {label} | " + " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "-" for s in seeds)
                   + " |")
    return "\n".join(out)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if results["task_kind"] == "classification" else "rmse"
    lines_ = results["summary"]
    labels = [method_label(line, results).replace(" (names", "\n(names") for line in lines_]
    means = [line[metric]["mean"] for line in lines_]
    stds = [line[metric]["std"] for line in lines_]
    colours = ["tab:red" if line["method"] == "lift" else "tab:orange" if line["method"] == "base"
               else "tab:blue" for line in lines_]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(lines_)), 4))
    ax.bar(range(len(lines_)), means, yerr=stds, capsize=3, color=colours)
    ax.set_xticks(range(len(lines_)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"LIFT on {results['task']} ({results['task_kind']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], folder: Path) -> None:
    """results.json, report.md and report.png into ``folder``."""
    seeds = ", ".join(map(str, results["seeds"]))
    header = (f"# LIFT on `{results['task']}` ({results['task_kind']})\n\n"
              f"Table: {results['table']['origin']}, {results['table']['rows']} rows, "
              f"{results['table']['features']} features. Split 80/20"
              f"{' stratified by class' if results['task_kind'] == 'classification' else ''}, seeds {seeds}; "
              f"every method uses the same splits. LIFT: `{results['model']}` tuned with "
              f"`{results['recipe']}`{''.join(' ' + o for o in results['overrides'])}; scored on "
              f"{len(results['templates'])} template(s) ({', '.join(results['templates'])}) "
              + ("by rank classification over the class names"
                 if results["task_kind"] == "classification"
                 else "by greedy generation parsed as a number (an unparsable answer is scored as the "
                      "training mean and counted)")
              + ". A seed's score is the mean over templates.\n\n")
    metric = "accuracy %" if results["task_kind"] == "classification" else "RMSE"
    (folder / "report.md").write_text(header + table(results) + "\n\n![chart](report.png)\n\n"
                                      f"## Per seed ({metric})\n\n" + per_seed_table(results) + "\n",
                                      encoding="utf-8")
    _chart(results, folder / "report.png")
    write_json_atomic(folder / "results.json", results)  # last: marks a complete report

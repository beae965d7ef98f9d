"""The LIFT report: one table (LIFT rows beside the baselines), a chart, results.json.

With training sizes the report adds a table and a panel of each method's score against the
number of training rows; for a synthetic function, a panel of the learned function against the
truth and the baselines; random-init and in-context runs are rows of the same table.
"""

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
    model, names = Path(str(line.get("model") or results["model"])).name, line["names"]
    big = Path(str(results.get("proxy_base"))).name
    if line["method"] == "lift":
        return f"LIFT: {model} + LoRA (names: {names})"
    if line["method"] == "lift_random":
        return f"LIFT: {model} architecture, random init + LoRA (names: {names})"
    if line["method"] == "in_context":
        fitted = f", {line['demonstrations']:.1f} fitted on average" if "demonstrations" in line else ""
        return f"{model} untuned, in-context k={line.get('shots')}{fitted} (names: {names})"
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
    """Sort key for a summary line or record: LIFT, then untuned, then baselines; each method's
    models side by side in the report's order; modes as asked."""
    order = {"lift": 0, "lift_random": 1, "in_context": 2, "base": 3, "proxy": 4, "proxy_base": 5}
    models = {model: i for i, model in enumerate(_models(results))}
    modes = {mode: i for i, mode in enumerate(results["names"])}  # names, generic, shuffled
    return lambda line: (order.get(line["method"], 6), models.get(line.get("model"), 0),
                         modes.get(line["names"], -1), _size_key(line.get("train_size")))


def _models(results: dict[str, Any]) -> list[str]:
    """The report's models, first the one its run folders are named by (older reports: one)."""
    return results.get("models") or [results["model"]]


def _size_key(size: int | None) -> float:
    return float("inf") if size is None else size


def _sized(results: dict[str, Any]) -> bool:
    """Whether the report has training sizes other than the whole split."""
    return any(size is not None for size in results.get("train_sizes") or [None])


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per method (LIFT first), mean ± std over seeds."""
    classification = results["task_kind"] == "classification"
    lines_ = sorted(results["summary"], key=_row_order(results))
    sized = _sized(results)
    if classification:
        header = ["method", "accuracy % (mean ± std over seeds)", "seeds"]
    else:
        header = ["method", "RMSE (mean ± std)", "RAE (mean ± std)", "seeds", "unparsable answers"]
    if sized:
        header.insert(1, "training rows")
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines_:
        cells = [method_label(line, results)]
        if sized:
            cells.append("all" if line.get("train_size") is None else str(line["train_size"]))
        if classification:
            cells += [mean_std_cell(line["accuracy"]), str(line["accuracy"]["n"])]
        else:
            unparsable = (f"{int(line['unparsable'])} / {int(line['answers'])}" if "answers" in line
                          else "-")
            cells += [mean_std_cell(line["rmse"]), mean_std_cell(line["rae"], 3), str(line["rmse"]["n"]),
                      unparsable]
        out.append("| " + " | ".join(cells) + " |")
    for name, value in PUBLISHED.get(results["task"], {}).items() if classification else []:
        out.append(f"| published: {name} (Dinh et al. 2022; not run here) |{' - |' if sized else ''} "
                   f"{value:.2f} | - |")
    return "\n".join(out)


def _metric(results: dict[str, Any]) -> str:
    return "accuracy" if results["task_kind"] == "classification" else "rmse"


def size_table(results: dict[str, Any]) -> str:
    """Markdown: each method's mean score (over seeds) at each training size."""
    metric = _metric(results)
    sizes = [s for s in results["train_sizes"] if s is not None]
    scores: dict[str, dict[int, float]] = {}
    for line in sorted(results["summary"], key=_row_order(results)):
        if line.get("train_size") is not None:
            scores.setdefault(method_label(line, results), {})[line["train_size"]] = line[metric]["mean"]
    out = ["| method | " + " | ".join(map(str, sizes)) + " |", "|---|" + "---|" * len(sizes)]
    for label, by_size in scores.items():
        out.append(f"| {label} | " + " | ".join(f"{by_size[s]:.2f}" if s in by_size else "-" for s in sizes)
                   + " |")
    return "\n".join(out)


def per_seed_table(results: dict[str, Any]) -> str:
    """Markdown: each method's score on each seed's split (a seed's LIFT score is its template mean)."""
    metric = _metric(results)
    seeds = sorted({r["seed"] for r in results["records"]})
    scores: dict[str, dict[int, float]] = {}
    for record in sorted(results["records"], key=_row_order(results)):
        size = record.get("train_size")
        rows = "" if size is None or not _sized(results) else f", {size} training rows"
        if record["method"] == "baselines":
            for name, values in record["scores"].items():
                scores.setdefault(name.replace("_", " ") + rows, {})[record["seed"]] = values[metric]
        else:
            label = method_label({**record, "demonstrations": record.get("demonstrations_mean")}
                                 if "demonstrations_mean" in record else record, results) + rows
            templates = record["per_template"].values()
            scores.setdefault(label, {})[record["seed"]] = sum(t[metric] for t in templates) / len(templates)
    out = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for label, by_seed in scores.items():
        out.append(f"| {label} | " + " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "-" for s in seeds)
                   + " |")
    return "\n".join(out)


# The baselines LIFT draws beside the learned function.
PLOTTED_BASELINES = ("polynomial_regression", "gaussian_process", "knn", "mlp")
BASELINE_COLOURS = ("tab:blue", "tab:orange", "tab:olive", "tab:brown")  # none of the LM methods' colours
_COLOURS = {"lift": "tab:red", "lift_random": "tab:purple", "in_context": "tab:green", "base": "tab:orange"}


def _bars(ax: Any, results: dict[str, Any]) -> None:
    """Each method at the largest training size (and the untuned / in-context rows)."""
    metric = _metric(results)
    largest = results.get("train_sizes", [None])[-1]
    lines_ = [line for line in sorted(results["summary"], key=_row_order(results))
              if line.get("train_size") in (None, largest)]
    labels = [method_label(line, results).replace(" (names", "\n(names") for line in lines_]
    first = _models(results)[0]
    ax.bar(range(len(lines_)), [line[metric]["mean"] for line in lines_],
           yerr=[line[metric]["std"] for line in lines_], capsize=3,
           color=[_COLOURS.get(line["method"], "tab:blue") for line in lines_],
           hatch=["//" if line.get("model") not in (None, first) else "" for line in lines_])
    ax.set_xticks(range(len(lines_)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    rows = "" if largest is None else f", {largest} training rows"
    ax.set_title(f"LIFT on {results['task']} ({results['task_kind']}{rows})", fontsize=9)


def _curves(ax: Any, results: dict[str, Any]) -> None:
    """Score against training-set size, one line per method (LIFT bold)."""
    metric = _metric(results)
    series: dict[str, list[tuple[int, float, float]]] = {}
    methods: dict[str, str] = {}
    models: dict[str, str | None] = {}
    for line in sorted(results["summary"], key=_row_order(results)):
        if line.get("train_size") is None:
            continue
        label = method_label(line, results)
        series.setdefault(label, []).append((line["train_size"], line[metric]["mean"], line[metric]["std"]))
        methods[label], models[label] = line["method"], line.get("model")
    first = _models(results)[0]
    for label, points in series.items():
        xs, ys, errs = zip(*sorted(points), strict=True)
        ours = methods[label] in _COLOURS
        other_model = ours and models[label] not in (None, first)  # drawn dotted, in the same colour
        ax.errorbar(xs, ys, yerr=errs, marker="s" if other_model else "o", markersize=3, capsize=2,
                    label=label, color=_COLOURS.get(methods[label]), linewidth=2.2 if ours else 1.0,
                    linestyle=(":" if other_model else "-") if ours else "--", alpha=1.0 if ours else 0.7)
    import matplotlib.ticker

    sizes = sorted({x for points in series.values() for x, _, _ in points})
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training rows")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title("sample size", fontsize=9)
    ax.legend(fontsize=6)


def _predictions(results: dict[str, Any], plot: dict[str, Any]) -> dict[str, list[float | None]]:
    """The language-model methods' test predictions on the plotted seed and size (first template)."""
    out: dict[str, list[float | None]] = {}
    for record in sorted(results["records"], key=_row_order(results)):
        if record["method"] == "baselines" or record["seed"] != plot["seed"] \
                or record["names"] != results["names"][0]:
            continue
        if record["method"] in ("lift", "lift_random") and record.get("train_size") != plot["train_size"]:
            continue
        template = next(iter(record["per_template"].values()))
        if "predictions" in template:
            out[method_label(record, results)] = template["predictions"]
    return out


def _function(ax: Any, results: dict[str, Any]) -> None:
    """The learned function against the truth and the baselines (1-D: curves; 2-D: predicted vs true)."""
    plot = results["function_plot"]
    predictions = _predictions(results, plot)
    rows = "all training rows" if plot["train_size"] is None else f"{plot['train_size']} training rows"
    if plot["dim"] == 1:
        ax.scatter([x[0] for x in plot["train_x"]], plot["train_y"], s=6, color="0.75", label="training rows")
        ax.plot(plot["grid_x"], plot["grid_truth"], color="black", linewidth=2, label="truth")
        for name, colour in zip(PLOTTED_BASELINES, BASELINE_COLOURS, strict=True):
            if name in plot["curves"]:
                ax.plot(plot["grid_x"], plot["curves"][name], linewidth=0.9, linestyle="--", alpha=0.8,
                        color=colour, label=name.replace("_", " "))
        _scatter_predictions(ax, [x[0] for x in plot["test_x"]], predictions)
        ax.set_xlabel("x1")
        ax.set_ylabel("y")
    else:
        truth = plot["test_truth"]
        low, high = min(truth), max(truth)
        ax.plot([low, high], [low, high], color="black", linewidth=1.5, label="truth (y = x)")
        baseline = next(r for r in results["records"] if r["method"] == "baselines"
                        and r["seed"] == plot["seed"] and r.get("train_size") == plot["train_size"])
        for name, colour in zip(PLOTTED_BASELINES, BASELINE_COLOURS, strict=True):
            if name in baseline["scores"]:
                ax.scatter(truth, baseline["scores"][name]["predictions"], s=5, alpha=0.6, color=colour,
                           label=name.replace("_", " "))
        _scatter_predictions(ax, truth, predictions)
        ax.set_xlabel("true y (noise-free)")
        ax.set_ylabel("predicted y")
    ax.set_title(f"{results['task']}: test rows, seed {plot['seed']}, {rows}", fontsize=9)
    ax.legend(fontsize=6)


def _scatter_predictions(ax: Any, xs: list[float], predictions: dict[str, list[Any]]) -> None:
    """One marker per model's answered test row at ``xs`` (unparsable answers are not drawn)."""
    for (label, values), marker in zip(predictions.items(), "ovsD^", strict=False):
        kept = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if kept:
            ax.scatter(*zip(*kept, strict=True), s=14, marker=marker, zorder=5, label=label,
                       color=_COLOURS.get(_method_of(label)))


def _method_of(label: str) -> str:
    if "random init" in label:
        return "lift_random"
    if "in-context" in label:
        return "in_context"
    return "lift" if label.startswith("LIFT") else "base"


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [_bars]
    if len([s for s in results.get("train_sizes") or [] if s is not None]) > 1:
        panels.append(_curves)
    if results.get("function_plot"):
        panels.append(_function)
    bars = len([line for line in results["summary"]
                if line.get("train_size") in (None, (results.get("train_sizes") or [None])[-1])])
    width = max(6.0, 1.1 * bars, 6.5 * (len(panels) - 1))
    if len(panels) == 1:
        fig = plt.figure(figsize=(width, 4.5))
        _bars(fig.add_subplot(1, 1, 1), results)
    else:  # the bars across the top, the curves and / or the function below
        fig = plt.figure(figsize=(width, 9.5))
        grid = fig.add_gridspec(2, len(panels) - 1)
        _bars(fig.add_subplot(grid[0, :]), results)
        for column, draw in enumerate(panels[1:]):
            draw(fig.add_subplot(grid[1, column]), results)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict[str, Any], folder: Path) -> None:
    """results.json, report.md and report.png into ``folder``."""
    seeds = ", ".join(map(str, results["seeds"]))
    function = results.get("function")
    origin = "a synthetic function (below)" if function else results["table"]["origin"]
    split = (f"Split {function['n_train']} training / {function['n_test']} test rows" if function else
             f"Split 80/20{' stratified by class' if results['task_kind'] == 'classification' else ''}")
    header = (f"# LIFT on `{results['task']}` ({results['task_kind']})\n\n"
              f"Table: {origin}, {results['table']['rows']} rows, "
              f"{results['table']['features']} feature(s). {split}, seeds {seeds}; "
              f"every method uses the same splits. LIFT: {' and '.join(f'`{m}`' for m in _models(results))} "
              "tuned with "
              f"`{results['recipe']}`{''.join(' ' + o for o in results['overrides'])}; scored on "
              f"{len(results['templates'])} template(s) ({', '.join(results['templates'])}) "
              + ("by rank classification over the class names"
                 if results["task_kind"] == "classification"
                 else "by greedy generation parsed as a number (an unparsable answer is scored as the "
                      "training mean and counted)")
              + ". A seed's score is the mean over templates.\n\n")
    metric = "accuracy %" if results["task_kind"] == "classification" else "RMSE"
    notes = []
    if results.get("function"):
        from flan_builder.sources.functions import describe

        notes.append(f"Function: {describe(results['function'])}. Test rows are scored against the "
                     "noise-free y; the baselines add polynomial regression (degree 3) and a Gaussian "
                     "process (RBF + white noise).")
    if _sized(results):
        sizes = ", ".join("all" if s is None else str(s) for s in results["train_sizes"])
        notes.append(f"Training sizes {sizes}: nested subsets of each seed's training split (a larger "
                     "one holds every smaller one), all scored on that seed's one test split.")
    methods = {line["method"] for line in results["summary"]}
    if "lift_random" in methods:
        notes.append("Random init: the same architecture and parameter count with freshly drawn weights "
                     "(from its config, seeded), trained with the same recipe.")
    if "in_context" in methods:
        notes.append("In-context: the untuned model, no training; before each test prompt, k training "
                     "rows drawn per test row (seeded; never the test row's content) as solved exemplars "
                     "in the same template, laid out as `flan eval --shots` does, the last-drawn dropped "
                     "while the prompt would not fit the model's context; scored like the tuned model.")
    body = header + "".join(note + "\n\n" for note in notes) + table(results) + "\n\n![chart](report.png)\n\n"
    if _sized(results):
        body += f"## By training-set size ({metric}, mean over seeds)\n\n" + size_table(results) + "\n\n"
    (folder / "report.md").write_text(body + f"## Per seed ({metric})\n\n" + per_seed_table(results) + "\n",
                                      encoding="utf-8")
    _chart(results, folder / "report.png")
    write_json_atomic(folder / "results.json", results)  # last: marks a complete report

"""From per-template records to per-dataset and per-cluster scores, and proxy-tuning's gap closed."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from flan_builder.evaluation.metrics import lower_is_better


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: mean/median/best/worst/std over templates; per cluster: mean over datasets."""
    per_task: dict[tuple[str, bool, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        per_task[(record["model"], record["options"], record["task"])].append(record)
    datasets_: list[dict[str, Any]] = []
    for (model, options, task), group in sorted(per_task.items()):
        metric = group[0]["metric"]
        values = [r["scores"][metric] for r in group]
        best = min if lower_is_better(metric) else max
        worst = max if lower_is_better(metric) else min
        entry = {"model": model, "options": options, "task": task, "cluster": group[0]["cluster"],
                 "metric": metric, "templates": len(values), "mean": statistics.fmean(values),
                 "median": statistics.median(values), "best": best(values), "worst": worst(values),
                 "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                 "best_template": best(group, key=lambda r: r["scores"][metric])["template"]}
        if metric == "acc":
            entry["acc_norm_mean"] = statistics.fmean(r["scores"]["acc_norm"] for r in group)
        if all("unparsable" in r["scores"] for r in group):  # rows with no readable answer, over templates
            entry["unparsable"] = int(sum(r["scores"]["unparsable"] for r in group))
            entry["rows_scored"] = int(sum(r["scores"]["n"] for r in group))
        datasets_.append(entry)
    clusters: dict[tuple[str, bool, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in datasets_:
        if not lower_is_better(entry["metric"]):  # an error (RMSE) cannot be averaged with scores
            clusters[(entry["model"], entry["options"], entry["cluster"])].append(entry)
    out = []
    for (model, options, cluster), entries in sorted(clusters.items()):
        line = {"model": model, "options": options, "cluster": cluster,
                "mean": statistics.fmean(e["mean"] for e in entries), "datasets": len(entries)}
        if all("acc_norm_mean" in e for e in entries):  # only where every dataset has one
            line["acc_norm_mean"] = statistics.fmean(e["acc_norm_mean"] for e in entries)
        out.append(line)
    return {"datasets": datasets_, "clusters": out}


def gap_closed(summary: dict[str, Any], proxies: dict[str, str], direct: str,
               records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """% of the base-to-direct gap a proxy-tuned model closes: (proxy - base) / (direct - base).

    Per template (from ``records``), per dataset and per cluster, as Liu et al. (2024) report
    it (they have one prompt per task; the per-template rows show how much of a mean is one
    template). ``proxies`` maps each proxy model to its base. A gap of zero (direct tuning
    did not move the score) gives None.
    """
    per_template = [{"model": r["model"], "options": r["options"], "template": f"{r['task']}/{r['template']}",
                     "mean": r["scores"][r["metric"]]}
                    for r in records or [] if r["scores"].get(r["metric"]) is not None]
    levels = {"template": per_template, "dataset": summary["datasets"], "cluster": summary["clusters"]}
    lines = []
    for level, key in (("template", "template"), ("dataset", "task"), ("cluster", "cluster")):
        entries = levels[level]
        score = {(e["model"], e["options"], e[key]): e["mean"] for e in entries}
        for proxy, base in proxies.items():
            for (model, options, name), value in sorted(score.items()):
                if model != proxy or not {(base, options, name), (direct, options, name)} <= score.keys():
                    continue
                b, d = score[(base, options, name)], score[(direct, options, name)]
                lines.append({"level": level, "name": name, "options": options, "proxy": proxy, "base": base,
                              "direct": direct, "base_score": b, "proxy_score": value, "direct_score": d,
                              "gap_closed_pct": None if d == b else 100 * (value - b) / (d - b)})
    return lines

"""Charts of `flan eval` reports: untuned vs FLAN-tuned per held-out cluster, and the #clusters curve.

    # one group of bars per held-out cluster: the report's base beside every tuned model in it
    python bench/heldout_figure.py bars --out bench/figures/flan-gemma-heldout.png \\
        "nli (acc)=reports/gemma-nli-c100-seeds" "struct-to-text (ROUGE-L)=reports/gemma-s2t-c100+reports/s1"
    # FLAN's Figure 6: the held-out score against the number of training clusters, one report
    python bench/heldout_figure.py curve --out bench/figures/flan-gemma-clusters.png \\
        --report reports/gemma-clusters-nli 1=runs/gemma-clusters-c1 2=runs/gemma-clusters-c2 ...

Both read each report's cluster means (`results.json`, mean over datasets of the mean over
templates), with and without OPTIONS where the report has both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cluster_means(report: Path) -> tuple[str, dict[tuple[str, bool], float], bool]:
    """The report's base model, (model, with OPTIONS) -> its held-out cluster mean, and whether
    the cluster is classification (where OPTIONS mean something)."""
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    means = {(c["model"], bool(c["options"])): c["mean"] for c in results["clusters"]}
    return results["base"], means, any(d["metric"] == "acc" for d in results["datasets"])


def merged_means(reports: str) -> tuple[str, dict[tuple[str, bool], float], bool]:
    """``A+B+...``: A's base and models, plus every model of B... (tuned runs scored later on the
    same rows without the base: their report's first model is not a base)."""
    first, *more = reports.split("+")
    base, means, classification = cluster_means(Path(first))
    for report in more:
        means.update(cluster_means(Path(report))[1])
    return base, means, classification


def bars(groups: list[tuple[str, str]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(2.2 + 2.0 * len(groups), 4.2))
    x = 0.0
    ticks, labels = [], []
    for label, report in groups:
        base, means, classification = merged_means(report)
        for options in (True, False):
            if (base, options) not in means:
                continue
            models = [base] + sorted(m for m, o in means if o == options and m != base)
            start = x
            for i, model in enumerate(models):
                value = means[(model, options)]
                color = "0.6" if model == base else f"C{i % 10}"
                ax.bar(x, value, width=0.8, color=color, hatch=None if options else "//", edgecolor="white")
                ax.text(x, value + 0.3, f"{value:.1f}", ha="center", va="bottom", fontsize=7)
                x += 1
            ticks.append((start + x - 1) / 2)
            labels.append(f"{label}\n{'OPTIONS' if options else 'no OPTIONS'}" if classification else label)
            x += 0.8
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylabel("held-out score (mean over datasets and templates)")
    ax.set_title("untuned base (grey) beside FLAN-tuned runs (colours), each cluster unseen in training",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def curve(report: Path, points: list[tuple[float, str]], out: Path, title: str = "") -> None:
    base, means, _ = cluster_means(report)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for options, style in ((True, "o-"), (False, "s--")):
        xs = [n for n, model in points if (model, options) in means]
        if not xs:
            continue
        ys = [means[(model, options)] for n, model in points if (model, options) in means]
        line = ax.plot(xs, ys, style, label=f"FLAN-tuned, {'with' if options else 'without'} OPTIONS")[0]
        if (base, options) in means:
            ax.axhline(means[(base, options)], color=line.get_color(), linestyle=":",
                       label=f"untuned, {'with' if options else 'without'} OPTIONS")
    ax.set_xlabel("training clusters")
    ax.set_ylabel("held-out cluster mean")
    ax.set_xticks([n for n, _ in points])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def _pair(text: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=VALUE")
    return label, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    bar = sub.add_parser("bars", help="untuned vs tuned, one group per held-out cluster")
    bar.add_argument("groups", nargs="+", type=_pair,
                     help="LABEL=REPORT_DIR, or LABEL=REPORT_DIR+MORE_REPORT_DIR for runs scored later")
    bar.add_argument("--out", type=Path, required=True)
    cur = sub.add_parser("curve", help="held-out score against the number of training clusters")
    cur.add_argument("--report", type=Path, required=True)
    cur.add_argument("points", nargs="+", type=_pair, help="CLUSTERS=MODEL as named in the report")
    cur.add_argument("--out", type=Path, required=True)
    cur.add_argument("--title", default="")
    args = parser.parse_args()
    if args.kind == "bars":
        bars(args.groups, args.out)
    else:
        curve(args.report, [(float(n), model) for n, model in args.points], args.out, args.title)
    print(args.out)


if __name__ == "__main__":
    main()

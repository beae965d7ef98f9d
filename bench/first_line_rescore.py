"""Re-score a generation report's logged answers with every answer cut at its first line break.

An untuned base rarely stops on its own: it repeats the instruction or loops to the token limit,
and ROUGE / BLEU punish the extra words. Cutting every model's answers at their first line break
is a stop a user could give the base by hand; the gap that remains after it is the part of a
tuned model's gain that is not just knowing when to stop. Reads a report written by
``flan eval --log-samples`` and scores with the same shipped metric modules the evaluator uses.

    python bench/first_line_rescore.py reports/gemma-s2t-c100
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import evaluate

from flan_builder.evaluation.metrics import metric
from flan_builder.evaluation.rows import task_evaluations


def first_line(answer: str) -> str:
    return answer.strip().split("\n", 1)[0].strip()


def rescore(report: Path) -> list[dict]:
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    # how each task is scored, as `flan eval` read it: the build's manifest, else the task specs
    built = Path(results["data"]) / "manifest.json"
    manifest = json.loads(built.read_text(encoding="utf-8")) if built.is_file() else {}
    evaluations = task_evaluations(manifest, {r["task"] for r in results["records"]})
    modules: dict[str, evaluate.EvaluationModule] = {}
    per_dataset: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    words: dict[str, list[int]] = defaultdict(list)
    for record in results["records"]:
        key = record["metric"]
        if key == "acc" or not record.get("samples"):  # rank classification, or no logged answers
            continue
        with (report / record["samples"]).open(encoding="utf-8") as lines:
            samples = [json.loads(line) for line in lines]
        name = evaluations[record["task"]]["metric"]
        module = modules.setdefault(name, evaluate.load(str(metric(name).path)))
        answers = [s["answer"] for s in samples]
        references = [s["references"] for s in samples]
        cut = [first_line(a) for a in answers]
        for label, predictions in (("as generated", answers), ("first line", cut)):
            score = module.compute(predictions=predictions, references=references)[key]
            per_dataset[(record["model"], record["task"])][label].append(float(score))
        words[record["model"]] += [len(a.split()) for a in answers]
    datasets = [{"model": model, "task": task, **{k: statistics.fmean(v) for k, v in scores.items()},
                 "templates": len(scores["first line"])}
                for (model, task), scores in sorted(per_dataset.items())]
    means = []
    for model in sorted(words):
        mine = [r for r in datasets if r["model"] == model]
        means.append({"model": model, "task": "(mean of datasets)",
                     "as generated": statistics.fmean(r["as generated"] for r in mine),
                     "first line": statistics.fmean(r["first line"] for r in mine),
                     "templates": sum(r["templates"] for r in mine),
                     "words per answer": statistics.fmean(words[model])})
    return datasets + means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report folder written with --log-samples")
    args = parser.parse_args()
    print("| model | dataset | as generated | first line | templates | words per answer |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rescore(args.report):
        per = row.get("words per answer")
        print(f"| {row['model']} | {row['task']} | {row['as generated']:.1f} | {row['first line']:.1f} | "
              f"{row['templates']} | {'' if per is None else f'{per:.1f}'} |")


if __name__ == "__main__":
    main()

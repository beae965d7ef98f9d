"""``flan eval``: every model on exactly the same held-out rows, resumable, one report.

Results are appended to ``.<out>.partial/results.jsonl`` as each (model, task, template,
options) finishes, so an interrupted evaluation resumes where it stopped. The report
(``results.json``, ``report.md``, ``report.png``) is written atomically at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flan_builder.evaluation.aggregate import aggregate, gap_closed
from flan_builder.evaluation.rows import load_heldout, task_evaluations
from flan_builder.evaluation.scorers import score_classification, score_generation
from flan_builder.evaluation.suite import EvalConfig
from flan_builder.lm.load import check_spec, load_lm, spec_name
from flan_builder.workdir import ResultsLog, partial_dir

__all__ = ["EvalConfig", "evaluate_models", "score_classification", "score_generation"]


def evaluate_models(config: EvalConfig) -> dict[str, Any]:
    """Evaluate every model on the same rows; write the report atomically; return results."""
    from flan_builder.atomic import atomic_directory, check_output_free
    from flan_builder.evaluation.report import write_report
    from flan_builder.progress import progress

    started = time.perf_counter()
    config.check()
    check_output_free(config.out, config.overwrite)
    for spec in config.models:
        check_spec(spec)
    groups, manifest = load_heldout(config.data, tasks=config.tasks, template_filter=config.template_filter,
                                    templates=config.templates, limit=config.limit)
    evaluations = task_evaluations(manifest, {task for task, _ in groups})
    separator = manifest.get("separator", "\n\n")
    work = partial_dir(config.out)
    log = ResultsLog(work)
    done = {(r["model"], r["task"], r["template"], r["options"]) for r in log.records}
    names = [spec_name(spec) for spec in config.models]
    models_info = []
    for spec, name in zip(config.models, names, strict=True):
        todo = [(key, use) for key in groups for use in config.options
                if (name, key[0], key[1], use) not in done]
        if not todo:
            models_info.append({"name": name, "resumed": True})
            continue
        lm = load_lm(spec, config.batch_size)
        models_info.append(lm.info)
        with progress(todo, desc=f"evaluating {Path(name).name}", unit="template") as bar:
            for (task, template), use_options in bar:
                rows = groups[(task, template)]
                evaluation = evaluations[task]
                t0 = time.perf_counter()
                if evaluation["output_type"] == "multiple_choice":
                    scores = score_classification(lm, rows, separator, use_options)
                else:
                    scores = score_generation(lm, rows, evaluation, use_options, config.metric_from_hub)
                metric = next(k for k in scores if k not in ("n", "examples"))
                log.append({"model": name, "task": task, "cluster": rows[0]["cluster"], "template": template,
                            "options": use_options, "metric": metric, "scores": scores,
                            "seconds": round(time.perf_counter() - t0, 2)})
        lm.close()
        del lm
    records = [r for r in log.records if r["model"] in names]
    summary = aggregate(records)
    proxies = {spec.name: spec.base for spec in config.models if not isinstance(spec, str)}
    results = {
        "kind": "flan-builder evaluation",
        "data": str(config.data), "dataset_hash": manifest.get("content_hash", {}).get("all"),
        "heldout_cluster": manifest.get("heldout_cluster"),
        "models": models_info, "base": names[0],
        "limit": config.limit, "templates": config.templates, "suite": config.source,
        "records": records,
        **summary,
        **({"gap_closed": gap_closed(summary, proxies, config.direct)} if proxies and config.direct else {}),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    with atomic_directory(config.out, overwrite=config.overwrite) as tmp:
        write_report(results, tmp)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {config.out}/results.json, report.md, report.png", file=sys.stderr)
    return results

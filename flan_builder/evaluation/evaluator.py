"""``flan eval``: every model on exactly the same held-out rows, resumable, one report.

Results are appended to ``.<out>.partial/results.jsonl`` as each (model, task, template,
options) finishes, so an interrupted evaluation resumes where it stopped. The report
(``results.json``, ``report.md``, ``report.png`` and, with ``log_samples``, ``samples/``) is
written atomically at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flan_builder.evaluation.aggregate import aggregate, gap_closed
from flan_builder.evaluation.cot import check_cot
from flan_builder.evaluation.rows import load_heldout, task_evaluations
from flan_builder.evaluation.scorers import (
    score_classification,
    score_classification_settings,
    score_generation,
)
from flan_builder.evaluation.shots import ShotMaker
from flan_builder.evaluation.suite import EvalConfig
from flan_builder.lm.load import check_spec, load_lm, spec_name
from flan_builder.workdir import ResultsLog, partial_dir

__all__ = ["EvalConfig", "evaluate_models", "score_classification", "score_generation"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def sample_folders(names: list[str]) -> dict[str, str]:
    """model -> its folder under samples/: the short name, numbered where two would collide."""
    from flan_builder.evaluation.report import model_label

    folders: dict[str, str] = {}
    for name in names:
        folder = base = _safe(model_label(name))
        n = 2
        while folder in folders.values():
            folder, n = f"{base}-{n}", n + 1
        folders[name] = folder
    return folders


def sample_path(folder: str, task: str, template: str, use_options: bool) -> str:
    """Where one (model, task, template, options) group's samples go, relative to the report."""
    return f"samples/{folder}/{_safe(task)}/{_safe(template)}{'' if use_options else '.no-options'}.jsonl"


def _done(record: dict[str, Any], separator: str, log_samples: bool, shots: int = 0,
          shots_from: str = "task", cot: str = "none") -> bool:
    """Whether a logged record stands for this run: same separator (a record without one predates
    scoring options apart from the separator, so it is redone), same shots (and their source), same
    chain-of-thought mode, and samples kept when asked."""
    return (record.get("separator") == separator and record.get("shots", 0) == shots
            and (not shots or record.get("shots_from", "task") == shots_from)
            and record.get("cot", "none") == cot
            and (record.get("samples") is not None or not log_samples))


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
    check_cot(config.cot, evaluations, config.data)
    separator = manifest.get("separator", "\n\n") if config.separator is None else config.separator
    work = partial_dir(config.out)
    log = ResultsLog(work)
    state = _RunState(work, started)
    done = {(r["model"], r["task"], r["template"], r["options"]) for r in log.records
            if _done(r, separator, config.log_samples, config.shots, config.shots_from, config.cot)}
    shot_maker = ShotMaker(manifest, config.shots, config.shots_from, config.data) if config.shots else None
    names = [spec_name(spec) for spec in config.models]
    folders = sample_folders(names)
    models_info = []
    for spec, name in zip(config.models, names, strict=True):
        todo = [(key, use) for key in groups for use in config.options
                if (name, key[0], key[1], use) not in done]
        if not todo:  # scored by an earlier, interrupted run: its provenance was kept then
            models_info.append(state.models.get(name, {"name": name}))
            continue
        lm = load_lm(spec, config.batch_size)
        models_info.append(lm.info)
        state.models[name] = lm.info
        state.save()
        settings: dict[tuple[str, str], list[bool]] = {}
        for key, use in todo:
            settings.setdefault(key, []).append(use)
        scored_together: dict[tuple[str, str, bool], tuple[dict[str, Any], Any, float]] = {}
        with progress(todo, desc=f"evaluating {Path(name).name}", unit="template") as bar:
            for (task, template), use_options in bar:
                rows, group_separator, shots_used = groups[(task, template)], separator, 0
                if shot_maker is not None:  # k exemplars from the task's train split (evaluation/shots.py)
                    rows, group_separator, shots_used = shot_maker.prompts(task, template, rows, use_options,
                                                                           separator)
                evaluation = evaluations[task]
                t0 = time.perf_counter()
                samples: list[dict[str, Any]] | None = [] if config.log_samples else None
                if evaluation["output_type"] == "multiple_choice" and shot_maker is None and \
                        len(settings[(task, template)]) > 1:
                    # with and without OPTIONS in one scoring call: their shared input runs once
                    if (task, template, use_options) not in scored_together:
                        both = tuple(settings[(task, template)])
                        kept = {use: [] for use in both} if config.log_samples else None
                        results = score_classification_settings(lm, rows, group_separator, both, kept)
                        share = (time.perf_counter() - t0) / len(both)
                        scored_together.update({(task, template, use): (
                            results[use], kept and kept[use], share) for use in both})
                    scores, samples, seconds = scored_together.pop((task, template, use_options))
                    t0 = time.perf_counter() - seconds  # the record counts its share of the joint call
                elif evaluation["output_type"] == "multiple_choice":
                    scores = score_classification(lm, rows, group_separator, use_options, samples)
                else:
                    scores = score_generation(lm, rows, evaluation, use_options, config.metric_from_hub,
                                              samples, cot=config.cot, separator=group_separator)
                metric = next(k for k in scores if k not in ("n", "examples"))
                where = None
                if samples is not None:  # on disk before the record that points at it
                    where = sample_path(folders[name], task, template, use_options)
                    _write_samples(work / where, samples, {"model": name, "task": task, "template": template,
                                                           "with_options": use_options})
                log.append({"model": name, "task": task, "cluster": rows[0]["cluster"], "template": template,
                            "options": use_options, "separator": separator, "shots": config.shots,
                            "shots_from": config.shots_from, "shots_used": shots_used, "cot": config.cot,
                            "metric": metric,
                            "scores": scores, "samples": where,
                            "seconds": round(time.perf_counter() - t0, 2)})
                state.save()
        lm.close()
        del lm
    latest = {(r["model"], r["task"], r["template"], r["options"]): r for r in log.records
              if r["model"] in names and _done(r, separator, config.log_samples, config.shots,
                                               config.shots_from, config.cot)}
    records = list(latest.values())
    summary = aggregate(records)
    proxies = {spec.name: spec.base for spec in config.models if not isinstance(spec, str)}
    results = {
        "kind": "flan-builder evaluation",
        "data": str(config.data), "dataset_hash": manifest.get("content_hash", {}).get("all"),
        "heldout_cluster": manifest.get("heldout_cluster"),
        "models": models_info, "base": names[0],
        "limit": config.limit, "templates": config.templates, "suite": config.source,
        "separator": separator, "log_samples": config.log_samples, "shots": config.shots,
        "shots_from": config.shots_from, "cot": config.cot,
        "records": records,
        **summary,
        **({"gap_closed": gap_closed(summary, proxies, config.direct, records)}
           if proxies and config.direct else {}),
        "wall_time_s": round(state.elapsed(), 1),  # every session of a resumed run
        "sessions": state.sessions,
    }
    with atomic_directory(config.out, overwrite=config.overwrite) as tmp:
        for record in records if config.log_samples else []:
            (tmp / record["samples"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / record["samples"], tmp / record["samples"])
        write_report(results, tmp)
    shutil.rmtree(work, ignore_errors=True)
    extra = ", samples/" if config.log_samples else ""
    print(f"wrote {config.out}/results.json, report.md, report.png{extra}", file=sys.stderr)
    return results


class _RunState:
    """What a resumed evaluation must not forget, kept beside results.jsonl: each model's
    provenance (kind, source, method, as loaded) and the wall time of earlier sessions."""

    def __init__(self, work: Path, started: float) -> None:
        self.path = work / "run_state.json"
        self.started = started
        saved: dict[str, Any] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:  # written atomically, so only a hand edit gets here
                saved = {}
        self.models: dict[str, Any] = saved.get("models", {})
        self.earlier_s: float = saved.get("elapsed_s", 0.0)
        self.sessions: int = saved.get("sessions", 0) + 1

    def elapsed(self) -> float:
        return self.earlier_s + time.perf_counter() - self.started

    def save(self) -> None:
        from flan_builder.atomic import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"models": self.models, "elapsed_s": round(self.elapsed(), 2),
                                      "sessions": self.sessions})


def _write_samples(path: Path, samples: list[dict[str, Any]], group: dict[str, Any]) -> None:
    """One JSON line per row, each naming its group, written whole or not at all."""
    from flan_builder.atomic import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps({**group, **sample}, ensure_ascii=False) + "\n"
                                    for sample in samples))

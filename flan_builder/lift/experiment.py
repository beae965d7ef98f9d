"""``flan lift``: tabular rows as text -> LoRA-tuned LM vs scikit-learn baselines, one report.

For each feature-name mode and seed: the task's spec (with that mode and split seed) goes
through the ordinary builder (train split: each training row rendered with one of the
first ``templates`` templates, drawn at random) and trainer (recipe ``train/lift.yaml``);
the tuned model and, for comparison, the untuned one are evaluated on the test rows with
those templates (rank classification over the class names, or greedy generation parsed
as a number); the baselines are fitted on the same split. Each finished piece is appended to
``.<out>.partial/results.jsonl`` and each trained adapter kept there, so an interrupted
run resumes; the report is written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flan_builder.errors import FlanError
from flan_builder.resources import LIFT_RECIPE_NAME, shipped_dir
from flan_builder.specs import FEATURE_NAME_MODES, Registry, TaskSpec, load_registry, load_spec
from flan_builder.templating import DEFAULT_SEPARATOR
from flan_builder.workdir import ResultsLog, partial_dir

LIFT_RECIPE = shipped_dir("train") / f"{LIFT_RECIPE_NAME}.yaml"
REGRESSION_MAX_NEW_TOKENS = 12


@dataclass
class LiftConfig:
    out: Path
    dataset: str | None = None  # a bundled scikit-learn dataset (a spec in templates/tabular/)
    csv: Path | None = None  # or any CSV / parquet file ...
    target: str | None = None  # ... and the column to predict
    kind: str | None = None  # classification / regression (a file's default: guessed)
    model: str = "smollm2-135m"
    names: list[str] = field(default_factory=lambda: ["names"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    recipe: Path = LIFT_RECIPE
    overrides: list[str] = field(default_factory=list)
    # Train and evaluate with the first K templates. 1 is LIFT's protocol (one serialisation);
    # None uses all ten phrasings, FLAN-style (each training row gets one drawn at random).
    templates: int | None = 1
    with_options: bool = True
    base: bool = True  # also evaluate the untuned model on the same rows
    batch_size: int | str = "auto"
    digits: int = 4
    overwrite: bool = False
    # Add to a finished report at ``out``: keep its runs and scores, train only the (mode, seed)
    # pairs it lacks, and rewrite it covering both (the settings must match).
    extend: bool = False
    # Proxy-tuning: also score ``proxy_base`` (untuned) and proxy_base + alpha x (tuned - untuned
    # ``model``) on the same test rows, the tuned model being each seed's LoRA run.
    proxy_base: str | None = None
    alpha: float = 1.0
    proxy_level: str = "token"


# -- the task ------------------------------------------------------------------------------------

def _file_spec(config: LiftConfig, folder: Path) -> TaskSpec:
    """A spec for a user's table, written beside a copy of the shared serialisation templates."""
    from flan_builder.sources.tables import load_file
    from flan_builder.specs import default_templates_dir

    assert config.csv is not None and config.target is not None
    table = load_file(config.csv, config.target, config.kind)
    name = re.sub(r"[^A-Za-z0-9_]+", "_", table.name).strip("_") or "table"
    data: dict[str, Any] = {
        "task": name, "cluster": "tabular", "opt_in": True,
        "type": "classification" if table.kind == "classification" else "generation",
        "source": {"tabular": {"file": str(Path(config.csv).resolve()), "target": config.target,
                               "kind": table.kind},
                   "splits": {"train": "train", "eval": "test"}},
        "license": "unknown", "license_note": f"user table {config.csv}",
        "constants": {"question": f"What is the {config.target}?"},
        "templates": "_serialisations.yaml",
    }
    if table.kind == "classification":
        data.update(fields=["features", "label"], options=table.classes, answer="label")
    else:
        data.update(fields=["features", "target", "target_text"], references="[target_text]",
                    metric="flan_regression", generation={"max_new_tokens": REGRESSION_MAX_NEW_TOKENS})
    spec_dir = folder / "tabular"
    spec_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(default_templates_dir() / "tabular" / "_serialisations.yaml", spec_dir)
    path = spec_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_spec(path)


def task_spec(config: LiftConfig, work: Path) -> TaskSpec:
    """The spec of the table being lifted: a shipped tabular spec, or one made for a file."""
    if (config.dataset is None) == (config.csv is None):
        raise FlanError("give one of --dataset NAME (iris, wine, breast_cancer, digits, diabetes) or "
                        "--csv FILE --target COLUMN")
    if config.csv is not None:
        if not config.target:
            raise FlanError(f"--csv {config.csv} needs --target COLUMN (the column to predict)")
        return _file_spec(config, work / "spec")
    if config.target or config.kind:
        raise FlanError("--target and --kind go with --csv; a bundled dataset already has its target")
    registry = load_registry()
    spec = registry.task(config.dataset)
    if spec.source.tabular is None:
        raise FlanError(f"{config.dataset} is not a tabular task; tabular ones: "
                        f"{', '.join(s.name for s in registry.in_cluster('tabular'))}")
    return spec


def _variant(spec: TaskSpec, mode: str, seed: int, digits: int) -> TaskSpec:
    tabular = {**(spec.source.tabular or {}), "names": mode, "seed": seed, "digits": digits}
    return dataclasses.replace(spec, source=dataclasses.replace(spec.source, tabular=tabular))


# -- one (mode, seed) ----------------------------------------------------------------------------

def _build(spec: TaskSpec, seed: int, out: Path, with_options: bool, templates: int | None) -> Path:
    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig

    if not (out / "manifest.json").is_file():
        registry = Registry(tasks={spec.name: spec}, root=spec.path.parent.parent)
        build(BuildConfig(heldout=None, out=out, seed=seed, tasks=[spec.name], with_options=with_options,
                          mixing=MixingConfig(max_templates=templates), overwrite=True), registry=registry)
    return out


def _train(config: LiftConfig, dataset: Path, seed: int, out: Path) -> dict[str, Any]:
    from flan_builder.training.job import RUN_MANIFEST, train
    from flan_builder.training.recipe import load_recipe

    if (out / RUN_MANIFEST).is_file():
        return json.loads((out / RUN_MANIFEST).read_text(encoding="utf-8"))
    overrides = [*config.overrides, f"model={config.model}", f"output={out}", f"dataset.path={dataset}",
                 "heldout=none", f"sft.seed={seed}"]
    recipe = load_recipe(config.recipe, overrides)
    resume = partial_dir(out).is_dir() and any((partial_dir(out) / "checkpoints").glob("checkpoint-*"))
    return train(recipe, resume=resume, overwrite=not resume).manifest


def _test_rows(spec: TaskSpec, with_options: bool, templates: int | None) -> dict[str, list[dict[str, Any]]]:
    """template id -> the test rows rendered with it (the evaluator's row shape)."""
    from flan_builder.sources import load_split
    from flan_builder.templating import TaskRenderer

    renderer = TaskRenderer(spec, with_options=with_options)
    rows = load_split(spec, "eval", None)
    chosen = [i for i, t in enumerate(spec.templates) if not t.inverted][:templates]
    rendered: dict[str, list[dict[str, Any]]] = {spec.templates[i].id: [] for i in chosen}
    for index, row in enumerate(rows.all()):
        for example in renderer.render_all(row, chosen, split=rows.split, row_index=index):
            record = dataclasses.asdict(example)
            record["value"] = row.get("target")
            rendered[example.template_id].append(record)
    return rendered


def evaluate_rows(lm: Any, spec: TaskSpec, rendered: dict[str, list[dict[str, Any]]],
                  config: LiftConfig, train_mean: float | None) -> dict[str, Any]:
    """Per template: accuracy (rank classification) or RMSE / RAE from parsed greedy answers."""
    from flan_builder.evaluation.numbers import score_numbers
    from flan_builder.evaluation.scorers import score_classification
    from flan_builder.lm.base import GenerationRequest

    per_template: dict[str, dict[str, Any]] = {}
    for template, rows in rendered.items():
        if spec.type == "classification":
            scores = score_classification(lm, rows, DEFAULT_SEPARATOR, config.with_options)
            per_template[template] = {"accuracy": scores["acc"], "accuracy_norm": scores["acc_norm"],
                                      "n": scores["n"]}
            continue
        answers = lm.generate([GenerationRequest(row["prompt"], REGRESSION_MAX_NEW_TOKENS) for row in rows])
        # An unparsable answer stays in the denominator: it is scored as the training mean
        # (what the "mean" baseline predicts) and counted (evaluation.numbers' rule).
        assert train_mean is not None
        scores = score_numbers([row["value"] for row in rows], answers, train_mean)
        per_template[template] = {"rmse": scores["rmse"], "rae": scores["rae"], "n": len(rows),
                                  "unparsable": scores["unparsable"], "examples": answers[:3]}
    return per_template


# -- the whole run -------------------------------------------------------------------------------

def run_lift(config: LiftConfig) -> dict[str, Any]:
    """Every (mode, seed): build, train, evaluate, baselines; then one atomic report."""
    from flan_builder.atomic import atomic_directory, check_output_free
    from flan_builder.lift.baselines import fit_baselines
    from flan_builder.lift.report import write_report
    from flan_builder.lm.load import load_lm, proxy_spec
    from flan_builder.sources.tables import load_table, split_indices

    started = time.perf_counter()
    for mode in config.names:
        if mode not in FEATURE_NAME_MODES:
            raise FlanError(f"--names takes {', '.join(FEATURE_NAME_MODES)} (got {mode!r})")
    if not config.seeds:
        raise FlanError("--seeds needs at least one seed")
    if config.digits < 1:
        raise FlanError(f"--digits must be at least 1 (got {config.digits})")
    if config.templates is not None and config.templates < 1:
        raise FlanError(f"--templates must be at least 1 (got {config.templates})")
    check_output_free(config.out, config.overwrite or config.extend)
    work = partial_dir(config.out)
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec = task_spec(config, work)
        # the report covers these; this invocation trains only config.names x config.seeds
        all_names, all_seeds = _adopt_report(config, spec, work) if config.extend else \
            (config.names, config.seeds)
        source = spec.source.tabular or {}
        table = load_table(source, base=spec.path.parent)
        # seed -> (train, test) row indices; a split that cannot be made fails now, before any training
        splits = {seed: split_indices(table, seed, float(source["test_size"])) for seed in all_seeds}
    except FlanError:
        if fresh:  # nothing was done: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    log = ResultsLog(work)
    records = log.records
    done = {_key(r) for r in records}
    print(f"lift {spec.name}: {len(table.rows)} rows, {len(table.feature_names)} features, {table.kind}; "
          f"names {', '.join(config.names)}; seeds {', '.join(map(str, config.seeds))}", file=sys.stderr)

    for seed, (train_idx, test_idx) in splits.items():
        if ("baselines", None, seed) not in done:
            log.append({"method": "baselines", "names": None, "seed": seed,
                        "scores": fit_baselines(table, train_idx, test_idx, seed),
                        "train_rows": len(train_idx), "test_rows": len(test_idx)})
    for mode in config.names:
        for seed in config.seeds:
            variant = _variant(spec, mode, seed, config.digits)
            rendered = _test_rows(variant, config.with_options, config.templates)
            train_idx = splits[seed][0]
            mean = sum(table.target[i] for i in train_idx) / len(train_idx) \
                if spec.type != "classification" else None
            run_dir = work / "runs" / f"{mode}-seed{seed}"  # this (mode, seed)'s LoRA run
            methods = ["lift", *(["base"] if config.base else []),
                       *(["proxy", "proxy_base"] if config.proxy_base else [])]
            for method in methods:
                if (method, mode, seed) in done:
                    continue
                t0 = time.perf_counter()
                run_info: dict[str, Any] = {}
                if method == "lift":
                    data = _build(variant, seed, work / "data" / f"{mode}-seed{seed}", config.with_options,
                                  config.templates)
                    manifest = _train(config, data, seed, run_dir)
                    run_info = {"train_rows": manifest["dataset"]["rows_trained"],
                                "steps": manifest["steps"], "tokens": manifest["tokens_seen"],
                                "train_seconds": manifest.get("wall_time_s"),
                                "final_loss": manifest["final_loss"], "run": str(run_dir)}
                    model_name = str(run_dir)
                elif method == "proxy":  # the LoRA run of this (mode, seed) steers the larger base
                    model_name = proxy_spec(config.proxy_base, str(run_dir), config.model, config.alpha,
                                            config.proxy_level)
                elif method == "proxy_base":
                    model_name = config.proxy_base
                else:
                    model_name = config.model
                lm = load_lm(model_name, config.batch_size)
                e0 = time.perf_counter()
                per_template = evaluate_rows(lm, variant, rendered, config, mean)
                lm.close()
                log.append({"method": method, "names": mode, "seed": seed, "per_template": per_template,
                            **run_info, "eval_seconds": round(time.perf_counter() - e0, 1),
                            "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {method} names={mode} seed={seed}: {_summary(per_template)} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    results = {
        "kind": "flan-builder LIFT run", "task": spec.name, "task_kind": table.kind,
        "table": {"origin": table.origin, "rows": len(table.rows), "features": len(table.feature_names),
                  "classes": table.classes},
        **_settings(config, spec), "names": all_names, "seeds": all_seeds,
        "records": [r for r in records if r["seed"] in all_seeds
                    and (r["names"] is None or r["names"] in all_names)],
        "wall_time_s_this_invocation": round(time.perf_counter() - started, 1),
    }
    results["summary"] = summarise(results)
    with atomic_directory(config.out, overwrite=config.overwrite or config.extend) as tmp:
        write_report(results, tmp)
        if (work / "runs").is_dir():
            shutil.copytree(work / "runs", tmp / "runs")  # the tuned adapters, one per (mode, seed)
        if (work / "spec").is_dir():
            shutil.copytree(work / "spec", tmp / "spec")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {config.out}/results.json, report.md, report.png", file=sys.stderr)
    return results


def _key(record: dict[str, Any]) -> tuple[str, str | None, int]:
    """What one results.jsonl line stands for: (method, names mode, seed)."""
    return record["method"], record.get("names"), record["seed"]


def _settings(config: LiftConfig, spec: TaskSpec) -> dict[str, Any]:
    """What must agree for two runs' scores to share one table."""
    return {"task": spec.name, "model": config.model, "recipe": _shown_path(config.recipe),
            "overrides": config.overrides, "with_options": config.with_options,
            "templates": [t.id for t in spec.templates if not t.inverted][:config.templates],
            "digits": config.digits,
            **({"proxy_base": config.proxy_base, "alpha": config.alpha, "proxy_level": config.proxy_level}
               if config.proxy_base else {})}


def _adopt_report(config: LiftConfig, spec: TaskSpec, work: Path) -> tuple[list[str], list[int]]:
    """--extend: seed the work folder with a finished report's scores and adapters.

    Returns the name modes and seeds the rewritten report covers: the report's and the requested
    ones together, so it loses nothing. Only the requested (mode, seed) pairs that the report lacks
    are trained (a sparse grid is fine: the table says how many seeds each row has). A report made
    with other settings is refused.
    """
    report = config.out / "results.json"
    if not report.is_file():
        if config.out.exists():
            raise FlanError(f"--extend: {config.out} holds no finished LIFT report (no results.json); "
                            "choose another --out or pass --overwrite")
        return config.names, config.seeds  # nothing to extend yet: an ordinary run
    old = json.loads(report.read_text(encoding="utf-8"))
    wanted = _settings(config, spec)
    for key, value in wanted.items():
        same = (Path(str(old.get(key))).resolve() == Path(config.recipe).resolve() if key == "recipe"
                else old.get(key) == value)  # a recipe is shown relative to where each run started
        if not same:
            raise FlanError(f"--extend: {config.out} was made with {key} = {old.get(key)!r}, this run has "
                            f"{value!r}; scores from different settings cannot share a table. Use the "
                            "same settings or another --out")
    # Merge rather than copy: an interrupted extension may already hold some of them.
    log = ResultsLog(work)
    logged = {_key(record) for record in log.records}
    for record in old["records"]:
        if _key(record) not in logged:
            log.append(record)
    for run in sorted((config.out / "runs").glob("*")) if (config.out / "runs").is_dir() else []:
        if not (work / "runs" / run.name).exists():
            shutil.copytree(run, work / "runs" / run.name)
    return list(dict.fromkeys([*old["names"], *config.names])), sorted(set(old["seeds"]) | set(config.seeds))


def _shown_path(path: Path) -> str:
    """A path relative to the working directory when it is under it (reports travel)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _summary(per_template: dict[str, dict[str, Any]]) -> str:
    key = "accuracy" if "accuracy" in next(iter(per_template.values())) else "rmse"
    values = [s[key] for s in per_template.values()]
    return f"{key} {statistics.fmean(values):.2f} over {len(values)} template(s)"


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per method: each metric as mean ± std over seeds (a seed's score is its template mean)."""
    metrics = ("accuracy",) if results["task_kind"] == "classification" else ("rmse", "rae")
    lines: list[dict[str, Any]] = []
    by_seed: dict[tuple[str, str | None], dict[str, list[float]]] = {}
    extra: dict[tuple[str, str | None], dict[str, float]] = {}
    for record in results["records"]:
        if record["method"] == "baselines":
            for name, scores in record["scores"].items():
                slot = by_seed.setdefault((name, None), {m: [] for m in metrics})
                for m in metrics:
                    slot[m].append(scores[m])
            continue
        key = (record["method"], record["names"])
        slot = by_seed.setdefault(key, {m: [] for m in metrics})
        templates = record["per_template"].values()
        for m in metrics:
            slot[m].append(statistics.fmean(t[m] for t in templates))
        info = extra.setdefault(key, {"unparsable": 0, "answers": 0, "seconds": 0.0})
        info["unparsable"] += sum(t.get("unparsable", 0) for t in templates)
        info["answers"] += sum(t["n"] for t in templates)
        info["seconds"] += record.get("seconds", 0.0)
    for (method, names), values in by_seed.items():
        line: dict[str, Any] = {"method": method, "names": names}
        line.update({m: _mean_std(v) for m, v in values.items()})
        line.update(extra.get((method, names), {}))
        lines.append(line)
    return lines

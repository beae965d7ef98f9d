"""``flan lift``: tabular rows as text -> LoRA-tuned LM vs scikit-learn baselines, one report.

For each feature-name mode and seed: the task's spec (with that mode and split seed) goes
through the ordinary builder (train split: each training row rendered with one of the
first ``templates`` templates, drawn at random) and trainer (recipe ``train/lift.yaml``);
the tuned model and, for comparison, the untuned one are evaluated on the test rows with
those templates (rank classification over the class names, or greedy generation parsed
as a number); the baselines are fitted on the same split. Each finished piece is appended to
``.<out>.partial/results.jsonl`` and each trained adapter kept there, so an interrupted
run resumes; the report is written atomically at the end.

LIFT's other experiments are modes of the same run: a synthetic function instead of a table
(``function``: LIFT's families or an expression of x1, x2; ``sources/functions.py``), nested
training subsets sharing one test split (``train_sizes``), the same architecture trained from
random weights beside the pretrained one (``random_init``), and the untuned model given k
serialised training rows as demonstrations (``in_context``), scored like the tuned one. Several
models (``model`` and ``other_models``) each get every one of these rows, side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
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
    # More models trained and scored the same way beside ``model``, one set of rows each (the
    # report's first model names its run folders; the others' carry their own name).
    other_models: list[str] = field(default_factory=list)
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
    # A synthetic function instead of a table: a LIFT family (linear, quadratic, exponential, cosine,
    # l1norm, piecewise) or an expression of x1 (and x2); None settings take LIFT's defaults.
    function: str | None = None
    dim: int | None = None
    noise: float | None = None
    x_range: tuple[float, float] | None = None
    function_rows: tuple[int, int] | None = None  # (training rows, test rows)
    data_seed: int = 0
    # Sample-size curve: train and fit the baselines on nested subsets of each seed's training
    # split (these many rows), all scored on that seed's one test split. None: the whole split.
    train_sizes: list[int] | None = None
    # Also train the same architecture from random weights with the same recipe (--init random).
    random_init: bool = False
    # Also score the untuned model with this many serialised training rows as demonstrations.
    in_context: int | None = None

    @property
    def models(self) -> list[str]:
        """Every model this invocation trains and scores, ``model`` first."""
        return [self.model, *self.other_models]


# -- the task ------------------------------------------------------------------------------------

def _write_spec(folder: Path, name: str, data: dict[str, Any]) -> TaskSpec:
    """A made spec, written beside a copy of the shared serialisation templates, and loaded."""
    from flan_builder.specs import default_templates_dir

    spec_dir = folder / "tabular"
    spec_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(default_templates_dir() / "tabular" / "_serialisations.yaml", spec_dir)
    path = spec_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_spec(path)


def _regression_fields() -> dict[str, Any]:
    return {"fields": ["features", "target", "target_text"], "references": "[target_text]",
            "metric": "flan_regression", "generation": {"max_new_tokens": REGRESSION_MAX_NEW_TOKENS}}


def function_settings(config: LiftConfig) -> dict[str, Any]:
    """--function and its settings, checked, with LIFT's defaults filled in."""
    from flan_builder.sources.functions import from_text, settings

    assert config.function is not None
    raw: dict[str, Any] = {**from_text(config.function), "dim": config.dim, "noise": config.noise,
                           "data_seed": config.data_seed}
    if config.x_range is not None:
        raw["low"], raw["high"] = config.x_range
    if config.function_rows is not None:
        raw["n_train"], raw["n_test"] = config.function_rows
    return settings(raw)


def _function_spec(config: LiftConfig, folder: Path) -> TaskSpec:
    """A spec for a synthetic function: x1 (, x2) -> y, split into n_train / n_test rows per seed."""
    from flan_builder.sources.functions import describe, task_name

    function = function_settings(config)
    name = task_name(function)
    return _write_spec(folder, name, {
        "task": name, "cluster": "tabular", "opt_in": True, "type": "generation",
        "source": {"tabular": {"function": function, "test_size": function["n_test"]},
                   "splits": {"train": "train", "eval": "test"}},
        "license": "unknown", "license_note": f"synthetic data made by flan lift: {describe(function)}",
        "constants": {"question": "What should be the y value?"},  # LIFT's own question
        "templates": "_serialisations.yaml", **_regression_fields(),
    })


def _file_spec(config: LiftConfig, folder: Path) -> TaskSpec:
    """A spec for a user's table, written beside a copy of the shared serialisation templates."""
    from flan_builder.sources.tables import load_file

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
        data.update(_regression_fields())
    return _write_spec(folder, name, data)


def task_spec(config: LiftConfig, work: Path) -> TaskSpec:
    """The spec of the table being lifted: a shipped tabular spec, or one made for a file or function."""
    if sum(x is not None for x in (config.dataset, config.csv, config.function)) != 1:
        raise FlanError("give one of --dataset NAME (iris, wine, breast_cancer, digits, diabetes), "
                        "--csv FILE --target COLUMN or --function NAME|EXPRESSION")
    function_flags = {"--dim": config.dim, "--noise": config.noise, "--x-range": config.x_range,
                      "--function-rows": config.function_rows}
    if config.function is None and any(v is not None for v in function_flags.values()):
        flag = next(k for k, v in function_flags.items() if v is not None)
        raise FlanError(f"{flag} goes with --function (a synthetic function's settings)")
    if config.function is not None:
        if config.target or config.kind:
            raise FlanError("--target and --kind go with --csv; a function's target is y (regression)")
        return _function_spec(config, work / "spec")
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


def _variant(spec: TaskSpec, mode: str, seed: int, digits: int, size: int | None = None) -> TaskSpec:
    tabular = {**(spec.source.tabular or {}), "names": mode, "seed": seed, "digits": digits,
               "train_size": size}
    return dataclasses.replace(spec, source=dataclasses.replace(spec.source, tabular=tabular))


def _suffix(size: int | None) -> str:
    return "" if size is None else f"-n{size}"


def model_tag(model: str) -> str:
    """A model's short name: an alias as it is, a folder or file by its last path part."""
    return Path(model.rstrip("/")).name or model


def _shared_tag(models: list[str]) -> str | None:
    """A short name (``model_tag``) two of ``models`` share, if any: their rows could not be told apart."""
    tags = [model_tag(m) for m in models]
    return next((t for t in tags if tags.count(t) > 1), None)


def _run_name(model: str, first_model: str, mode: str, seed: int, size: int | None) -> str:
    """A tuned run's folder: the report's first model's runs keep the plain name they always had."""
    prefix = "" if model == first_model else re.sub(r"[^A-Za-z0-9_.-]+", "_", model_tag(model)) + "-"
    return f"{prefix}{mode}-seed{seed}{_suffix(size)}"


# -- one (mode, seed) ----------------------------------------------------------------------------

def _build(spec: TaskSpec, seed: int, out: Path, with_options: bool, templates: int | None) -> Path:
    from flan_builder.build import BuildConfig, build
    from flan_builder.mixing import MixingConfig

    if not (out / "manifest.json").is_file():
        registry = Registry(tasks={spec.name: spec}, root=spec.path.parent.parent)
        build(BuildConfig(heldout=None, out=out, seed=seed, tasks=[spec.name], with_options=with_options,
                          mixing=MixingConfig(max_templates=templates), overwrite=True), registry=registry)
    return out


def _train(config: LiftConfig, dataset: Path, seed: int, out: Path,
           random_init: bool = False, model: str | None = None) -> dict[str, Any]:
    from flan_builder.training.job import RUN_MANIFEST, train
    from flan_builder.training.recipe import load_recipe

    if (out / RUN_MANIFEST).is_file():
        return json.loads((out / RUN_MANIFEST).read_text(encoding="utf-8"))
    overrides = [*config.overrides, f"model={model or config.model}", f"output={out}",
                 f"dataset.path={dataset}", "heldout=none", f"sft.seed={seed}",
                 *(["train.init=random"] if random_init else [])]
    recipe = load_recipe(config.recipe, overrides)
    resume = partial_dir(out).is_dir() and any((partial_dir(out) / "checkpoints").glob("checkpoint-*"))
    return train(recipe, resume=resume, overwrite=not resume).manifest


def _test_rows(spec: TaskSpec, with_options: bool, templates: int | None) -> dict[str, list[dict[str, Any]]]:
    """template id -> the test rows rendered with it (the evaluator's row shape)."""
    from flan_builder.sources import load_split
    from flan_builder.templating import TaskRenderer

    renderer = TaskRenderer(spec, with_options=with_options)
    rows = load_split(spec, "eval", None)
    chosen = _template_indices(spec, templates)
    rendered: dict[str, list[dict[str, Any]]] = {spec.templates[i].id: [] for i in chosen}
    for index, row in enumerate(rows.all()):
        for example in renderer.render_all(row, chosen, split=rows.split, row_index=index):
            record = dataclasses.asdict(example)
            record["value"] = row.get("target")
            rendered[example.template_id].append(record)
    return rendered


def _template_indices(spec: TaskSpec, templates: int | None) -> list[int]:
    return [i for i, t in enumerate(spec.templates) if not t.inverted][:templates]


# -- in-context LIFT -----------------------------------------------------------------------------

def demonstrations(spec: TaskSpec, table: Any, pool: list[int], templates: int | None,
                   with_options: bool) -> tuple[dict[str, list[str]], dict[int, str]]:
    """(template id -> each pool row (a training row) as a solved exemplar, table index -> the row's
    content). Exemplars are laid out as ``flan eval --shots`` lays them out (the template's few-shot
    pattern from ``flan_builder.fewshot``: instruction, separator, answer, example separator), with
    OPTIONS when the test prompts have them; the answer is the class name or the number as trained."""
    from flan_builder.fewshot import pattern_for
    from flan_builder.sources.serialise import serialise_rows
    from flan_builder.templating import TaskRenderer

    source = spec.source.tabular or {}
    rows = serialise_rows(table, source["names"], int(source["seed"]), int(source["digits"]))
    renderer = TaskRenderer(spec, with_options=with_options)
    out: dict[str, list[str]] = {}
    for index in _template_indices(spec, templates):
        pattern = pattern_for(spec.templates[index])
        examples = [renderer.render(rows[i], index, split="train", row_index=i) for i in pool]
        out[spec.templates[index].id] = [
            pattern.exemplar(e.prompt if with_options else e.input, e.target, DEFAULT_SEPARATOR)
            for e in examples]
    return out, {i: json.dumps(row["features"]) for i, row in enumerate(rows)}


def in_context_rows(spec: TaskSpec, rendered: dict[str, list[dict[str, Any]]], test_index: list[int],
                    demos: dict[str, list[str]], content: dict[int, str], pool: list[int], k: int, seed: int,
                    fits: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The test rows with k exemplars before each prompt.

    Per test row (its table index ``test_index[j]``), k training rows are drawn from ``pool`` with
    a generator seeded by (seed, test row) -- never the test row, nor a row with its content -- the
    same draw for every template. ``fits(prompt, row)`` says whether a prompt and its answer fit the
    model's context; the last-drawn exemplars are dropped until it does. Each returned row records
    the table indices of the exemplars it holds.
    """
    from flan_builder.fewshot import pattern_for

    out: dict[str, list[dict[str, Any]]] = {template: [] for template in rendered}
    used, trimmed = [], 0
    for j, test in enumerate(test_index):
        allowed = [p for p, index in enumerate(pool) if index != test and content[index] != content[test]]
        if k > len(allowed):
            raise FlanError(f"--in-context {k}: the training split has only {len(allowed)} rows to draw "
                            f"exemplars from for test row {test}; use at most {len(allowed)}")
        picks = random.Random(f"lift-in-context:{seed}:{test}").sample(allowed, k)
        for template, rows in rendered.items():
            row, pattern = rows[j], pattern_for(spec.template(template))
            # the query as flan eval --shots writes it (tabular templates keep the plain separator)
            prompt, text = (pattern.query(row[key], DEFAULT_SEPARATOR)[0] for key in ("prompt", "input"))
            blocks = [demos[template][p] for p in picks]
            while blocks and not fits("".join(blocks) + prompt, row):
                blocks.pop()
            trimmed += len(blocks) < k
            used.append(len(blocks))
            out[template].append({**row, "prompt": "".join(blocks) + prompt, "input": "".join(blocks) + text,
                                  "demonstrations": [pool[p] for p in picks[:len(blocks)]]})
    return out, {"shots": k, "demonstrations_mean": statistics.fmean(used) if used else 0.0,
                 "prompts_trimmed": trimmed, "prompts": len(used)}


def context_fit(lm: Any, spec: TaskSpec) -> tuple[Any, int]:
    """(fits(prompt, row), context length): whether a prompt plus its answer fits the model's window."""
    tokenizer, model = getattr(lm, "tokenizer", None), getattr(lm, "model", None)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if tokenizer is None or not isinstance(limit, int):
        raise FlanError(f"--in-context needs a local model whose prompt length can be measured "
                        f"({lm.name} has no tokenizer or context length here)")

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    def fits(prompt: str, row: dict[str, Any]) -> bool:
        if spec.type == "classification":  # the longest option after the separator
            return max(count(prompt + DEFAULT_SEPARATOR + o) for o in row["options"]) <= limit
        return count(prompt) + REGRESSION_MAX_NEW_TOKENS <= limit

    return fits, limit


def evaluate_rows(lm: Any, spec: TaskSpec, rendered: dict[str, list[dict[str, Any]]],
                  config: LiftConfig, train_mean: float | None) -> dict[str, Any]:
    """Per template: accuracy (rank classification) or RMSE / RAE from parsed greedy answers."""
    from flan_builder.evaluation.numbers import parse_number, score_numbers
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
                                  "unparsable": scores["unparsable"], "examples": answers[:3],
                                  "predictions": [parse_number(a) for a in answers]}
    return per_template


# -- the whole run -------------------------------------------------------------------------------

def _check_config(config: LiftConfig) -> None:
    for mode in config.names:
        if mode not in FEATURE_NAME_MODES:
            raise FlanError(f"--names takes {', '.join(FEATURE_NAME_MODES)} (got {mode!r})")
    if not config.seeds:
        raise FlanError("--seeds needs at least one seed")
    if config.digits < 1:
        raise FlanError(f"--digits must be at least 1 (got {config.digits})")
    if config.templates is not None and config.templates < 1:
        raise FlanError(f"--templates must be at least 1 (got {config.templates})")
    if config.train_sizes is not None:
        if not config.train_sizes or any(size < 1 for size in config.train_sizes):
            raise FlanError(f"--train-sizes takes whole numbers >= 1, e.g. 10,20,50,100 "
                            f"(got {','.join(map(str, config.train_sizes)) or 'nothing'})")
    if config.in_context is not None and config.in_context < 1:
        raise FlanError(f"--in-context takes the number of demonstrations, at least 1 "
                        f"(got {config.in_context})")
    if len(set(config.models)) < len(config.models):
        raise FlanError(f"--model lists a model twice ({','.join(config.models)})")
    shared = _shared_tag(config.models)
    if shared is not None:
        raise FlanError(f"--model: two models share the name {shared!r} in the report; give them "
                        "folders with different names")
    if config.proxy_base and config.other_models:
        raise FlanError("--proxy-base steers with one tuned model: give one --model (the expert's base)")


def _size_order(size: int | None) -> float:
    return math.inf if size is None else size  # the whole training split sorts last


def run_lift(config: LiftConfig) -> dict[str, Any]:
    """Every (mode, seed, training size): build, train, evaluate, baselines; then one atomic report."""
    from flan_builder.atomic import atomic_directory, check_output_free
    from flan_builder.lift.baselines import fit_baselines
    from flan_builder.lift.report import write_report
    from flan_builder.lm.load import load_lm, proxy_spec
    from flan_builder.sources.tables import load_table, split_indices, train_subset

    started = time.perf_counter()
    _check_config(config)
    check_output_free(config.out, config.overwrite or config.extend)
    work = partial_dir(config.out)
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    sizes: list[int | None] = sorted(set(config.train_sizes), key=_size_order) \
        if config.train_sizes else [None]
    try:
        spec = task_spec(config, work)
        # the report covers these; this invocation trains only config.names x config.seeds x sizes
        all_models, all_names, all_seeds, all_sizes = _adopt_report(config, spec, work, sizes) \
            if config.extend else (config.models, config.names, config.seeds, sizes)
        source = spec.source.tabular or {}
        table = load_table(source, base=spec.path.parent)
        # seed -> (train, test) row indices; a split that cannot be made fails now, before any training
        splits = {seed: split_indices(table, seed, source["test_size"]) for seed in all_seeds}
        # (seed, size) -> the training rows; nested, and every size shares the seed's test rows
        subsets = {(seed, size): splits[seed][0] if size is None else
                   train_subset(table, splits[seed][0], size, seed)
                   for seed in all_seeds for size in all_sizes}
    except FlanError:
        if fresh:  # nothing was done: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    log = ResultsLog(work)
    records = log.records
    done = {_key(r) for r in records}
    synthetic = table.clean_target is not None
    print(f"lift {spec.name}: {len(table.rows)} rows, {len(table.feature_names)} features, {table.kind}; "
          f"names {', '.join(config.names)}; seeds {', '.join(map(str, config.seeds))}"
          + (f"; training sizes {', '.join(map(str, sizes))}" if config.train_sizes else ""), file=sys.stderr)

    for seed, (_, test_idx) in splits.items():
        for size in all_sizes:
            if ("baselines", None, None, seed, size, None) not in done:
                train_idx = subsets[seed, size]
                log.append({"method": "baselines", "names": None, "seed": seed, "train_size": size,
                            "scores": fit_baselines(table, train_idx, test_idx, seed, predictions=synthetic),
                            "train_rows": len(train_idx), "test_rows": len(test_idx)})
    first_model = all_models[0]
    for mode in config.names:
        for seed in config.seeds:
            rendered = _test_rows(_variant(spec, mode, seed, config.digits), config.with_options,
                                  config.templates)
            jobs: list[tuple[str, str, int | None]] = []
            for model in config.models:
                for size in sizes:
                    jobs += [(model, "lift", size),
                             *([(model, "lift_random", size)] if config.random_init else []),
                             *([(model, "proxy", size)] if config.proxy_base else [])]
                jobs += [*([(model, "base", None)] if config.base else []),
                         *([(model, "proxy_base", None)] if config.proxy_base else []),
                         *([(model, "in_context", sizes[-1])] if config.in_context else [])]
            for model, method, size in jobs:
                shots = config.in_context if method == "in_context" else None
                if (method, model, mode, seed, size, shots) in done:
                    continue
                t0 = time.perf_counter()
                variant = _variant(spec, mode, seed, config.digits, size)
                # the untuned rows have no size of their own: their mean predictor (regression)
                # uses the largest training set, as in-context LIFT's exemplars do
                train_idx = subsets[seed, size if size is not None else sizes[-1]]
                mean = sum(table.target[i] for i in train_idx) / len(train_idx) \
                    if spec.type != "classification" else None
                run_dir = work / "runs" / _run_name(model, first_model, mode, seed, size)  # its LoRA adapter
                run_info: dict[str, Any] = {}
                if method in ("lift", "lift_random"):
                    data = _build(variant, seed, work / "data" / f"{mode}-seed{seed}{_suffix(size)}",
                                  config.with_options, config.templates)
                    if method == "lift_random":
                        run_dir = run_dir.with_name(run_dir.name + "-random")
                    manifest = _train(config, data, seed, run_dir, random_init=method == "lift_random",
                                      model=model)
                    run_info = {"train_rows": manifest["dataset"]["rows_trained"],
                                "steps": manifest["steps"], "tokens": manifest["tokens_seen"],
                                "train_seconds": manifest.get("wall_time_s"),
                                "final_loss": manifest["final_loss"], "run": str(run_dir),
                                "parameters": manifest.get("parameters")}
                    model_name = str(run_dir)
                elif method == "proxy":  # the LoRA run of this (mode, seed, size) steers the larger base
                    model_name = proxy_spec(config.proxy_base, str(run_dir), model, config.alpha,
                                            config.proxy_level)
                elif method == "proxy_base":
                    model_name = config.proxy_base
                else:
                    model_name = model
                lm = load_lm(model_name, config.batch_size)
                e0 = time.perf_counter()
                rows = rendered
                if method == "in_context":
                    assert shots is not None
                    fits, limit = context_fit(lm, variant)
                    demos, content = demonstrations(variant, table, train_idx, config.templates,
                                                    config.with_options)
                    rows, stats = in_context_rows(variant, rendered, splits[seed][1], demos, content,
                                                  train_idx, shots, seed, fits)
                    run_info = {**stats, "context_limit": limit, "train_rows": len(train_idx)}
                per_template = evaluate_rows(lm, variant, rows, config, mean)
                lm.close()
                log.append({"method": method, "model": model, "names": mode, "seed": seed, "train_size": size,
                            **({"shots": shots} if shots else {}), "per_template": per_template,
                            **run_info, "eval_seconds": round(time.perf_counter() - e0, 1),
                            "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {method}" + (f" model={model_tag(model)}" if len(all_models) > 1 else "")
                      + f" names={mode} seed={seed}"
                      + (f" train rows={size}" if size is not None else "")
                      + (f" k={shots}" if shots else "")
                      + f": {_summary(per_template)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    results = {
        "kind": "flan-builder LIFT run", "task": spec.name, "task_kind": table.kind,
        "table": {"origin": table.origin, "rows": len(table.rows), "features": len(table.feature_names),
                  "classes": table.classes},
        **_settings(config, spec), "model": first_model, "models": all_models, "names": all_names,
        "seeds": all_seeds, "train_sizes": all_sizes,
        "records": [r for r in records if r["seed"] in all_seeds
                    and (r["names"] is None or r["names"] in all_names)
                    and (r.get("train_size") is None or r.get("train_size") in all_sizes)],
        "wall_time_s_this_invocation": round(time.perf_counter() - started, 1),
    }
    results["summary"] = summarise(results)
    if synthetic:
        results["function_plot"] = _function_plot(table, results, splits, subsets)
    with atomic_directory(config.out, overwrite=config.overwrite or config.extend) as tmp:
        write_report(results, tmp)
        if (work / "runs").is_dir():
            shutil.copytree(work / "runs", tmp / "runs")  # the tuned adapters, one per (mode, seed, size)
        if (work / "spec").is_dir():
            shutil.copytree(work / "spec", tmp / "spec")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {config.out}/results.json, report.md, report.png", file=sys.stderr)
    return results


def _function_plot(table: Any, results: dict[str, Any], splits: dict[int, tuple[list[int], list[int]]],
                   subsets: dict[tuple[int, int | None], list[int]]) -> dict[str, Any]:
    """What the report draws for a synthetic function: the first seed at the largest training size
    (the truth, the training rows, each method's test predictions; for 1-D, each baseline's curve)."""
    from flan_builder.lift.baselines import fit_curves
    from flan_builder.sources.functions import grid

    seed, size = results["seeds"][0], results["train_sizes"][-1]
    train_idx, test_idx = subsets[seed, size], splits[seed][1]
    function = results["function"]
    assert table.clean_target is not None
    plot: dict[str, Any] = {
        "seed": seed, "train_size": size, "dim": function["dim"],
        "train_x": [table.rows[i] for i in train_idx], "train_y": [table.target[i] for i in train_idx],
        "test_x": [table.rows[i] for i in test_idx], "test_truth": [table.clean_target[i] for i in test_idx],
    }
    if function["dim"] == 1:
        plot["grid_x"], plot["grid_truth"] = grid(function)
        plot["curves"] = fit_curves(table, train_idx, seed, plot["grid_x"])
    return plot


def _key(record: dict[str, Any]) -> tuple[str, str | None, str | None, int, int | None, int | None]:
    """What one results.jsonl line stands for: (method, model, names mode, seed, training size, shots)."""
    return (record["method"], record.get("model"), record.get("names"), record["seed"],
            record.get("train_size"), record.get("shots"))


def _settings(config: LiftConfig, spec: TaskSpec) -> dict[str, Any]:
    """What must agree for two runs' scores to share one table."""
    function = (spec.source.tabular or {}).get("function")
    return {"task": spec.name, "recipe": _shown_path(config.recipe),
            "overrides": config.overrides, "with_options": config.with_options,
            "templates": [t.id for t in spec.templates if not t.inverted][:config.templates],
            "digits": config.digits,
            **({"function": function} if function else {}),
            **({"proxy_base": config.proxy_base, "alpha": config.alpha, "proxy_level": config.proxy_level}
               if config.proxy_base else {})}


def _adopt_report(config: LiftConfig, spec: TaskSpec, work: Path, sizes: list[int | None]
                  ) -> tuple[list[str], list[str], list[int], list[int | None]]:
    """--extend: seed the work folder with a finished report's scores and adapters.

    Returns the models, name modes, seeds and training sizes the rewritten report covers: the
    report's and the requested ones together, so it loses nothing. Only the requested (model, mode,
    seed, size) runs that the report lacks are trained (a sparse grid is fine: the table says how
    many seeds each row has); a model the report lacks is added beside its own. A report made
    with other settings is refused.
    """
    report = config.out / "results.json"
    if not report.is_file():
        if config.out.exists():
            raise FlanError(f"--extend: {config.out} holds no finished LIFT report (no results.json); "
                            "choose another --out or pass --overwrite")
        return config.models, config.names, config.seeds, sizes  # nothing to extend yet: an ordinary run
    old = json.loads(report.read_text(encoding="utf-8"))
    wanted = _settings(config, spec)
    for key, value in wanted.items():
        same = (Path(str(old.get(key))).resolve() == Path(config.recipe).resolve() if key == "recipe"
                else old.get(key) == value)  # a recipe is shown relative to where each run started
        if not same:
            raise FlanError(f"--extend: {config.out} was made with {key} = {old.get(key)!r}, this run has "
                            f"{value!r}; scores from different settings cannot share a table. Use the "
                            "same settings or another --out")
    models = list(dict.fromkeys([*old.get("models", [old["model"]]), *config.models]))
    shared = _shared_tag(models)
    if shared is not None:
        raise FlanError(f"--extend: {config.out} already has a model named {shared!r}; give the new one "
                        "a folder with another name")
    # Merge rather than copy: an interrupted extension may already hold some of them.
    log = ResultsLog(work)
    logged = {_key(record) for record in log.records}
    for record in old["records"]:
        if record["method"] != "baselines":
            record.setdefault("model", old["model"])  # a report from before several models
        if _key(record) not in logged:
            log.append(record)
    for run in sorted((config.out / "runs").glob("*")) if (config.out / "runs").is_dir() else []:
        if not (work / "runs" / run.name).exists():
            shutil.copytree(run, work / "runs" / run.name)
    all_sizes = sorted(set(old.get("train_sizes") or [None]) | set(sizes), key=_size_order)
    names = list(dict.fromkeys([*old["names"], *config.names]))
    return models, names, sorted(set(old["seeds"]) | set(config.seeds)), all_sizes


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
    """One line per (method, model, names, training size, shots): each metric as mean ± std over
    seeds (a seed's score is its template mean)."""
    metrics = ("accuracy",) if results["task_kind"] == "classification" else ("rmse", "rae")
    lines: list[dict[str, Any]] = []
    Group = tuple[str, str | None, str | None, int | None, int | None]
    by_seed: dict[Group, dict[str, list[float]]] = {}
    extra: dict[Group, dict[str, float]] = {}
    shown: dict[Group, list[float]] = {}
    for record in results["records"]:
        size = record.get("train_size")
        if record["method"] == "baselines":
            for name, scores in record["scores"].items():
                slot = by_seed.setdefault((name, None, None, size, None), {m: [] for m in metrics})
                for m in metrics:
                    slot[m].append(scores[m])
            continue
        key = (record["method"], record.get("model", results["model"]), record["names"], size,
               record.get("shots"))
        slot = by_seed.setdefault(key, {m: [] for m in metrics})
        templates = record["per_template"].values()
        for m in metrics:
            slot[m].append(statistics.fmean(t[m] for t in templates))
        info = extra.setdefault(key, {"unparsable": 0, "answers": 0, "seconds": 0.0})
        info["unparsable"] += sum(t.get("unparsable", 0) for t in templates)
        info["answers"] += sum(t["n"] for t in templates)
        info["seconds"] += record.get("seconds", 0.0)
        if "demonstrations_mean" in record:  # in-context: demonstrations that fitted, per prompt
            shown.setdefault(key, []).append(record["demonstrations_mean"])
    for key, values in by_seed.items():
        method, model, names, size, shots = key
        line: dict[str, Any] = {"method": method, **({"model": model} if model else {}), "names": names,
                                "train_size": size, "shots": shots}
        line.update({m: _mean_std(v) for m, v in values.items()})
        line.update(extra.get(key, {}))
        if key in shown:
            line["demonstrations"] = statistics.fmean(shown[key])
        lines.append(line)
    return lines

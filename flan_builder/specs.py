"""Task specs: one YAML file per dataset under ``templates/<cluster>/<task>.yaml``.

A spec holds the task's metadata (cluster, Hub id and config, local mirror name,
fields, type, how options and the answer are formed, optionally how it is evaluated)
and its Jinja templates. Facts about a whole cluster (held-out siblings, Hub card
category, default evaluation metric and generation budget, opt-in) live beside the specs
in ``templates/<cluster>/_cluster.yaml``. Specs are data; this module only reads and
validates them, it never executes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flan_builder.errors import FlanError

TASK_TYPES = ("classification", "multiple_choice", "regression", "generation")
# Types whose non-inverted templates are scored over a closed set of options.
OPTION_TYPES = ("classification", "multiple_choice", "regression")

# Names the builder puts into every template's context besides the row's own fields.
RESERVED_NAMES = ("row", "answer_choices", "correct_choice", "correct_index", "references")

TEMPLATES_DIR_ENV = "FLAN_TEMPLATES_DIR"

_SPEC_KEYS = {
    "task", "cluster", "also_in", "type", "source", "license", "license_note",
    "fields", "options", "answer", "references", "notes", "templates", "constants", "opt_in",
    "metric", "output_type", "generation", "shares_source_with",
}
CLUSTER_FILE = "_cluster.yaml"
_CLUSTER_KEYS = {"cluster", "siblings", "hub_category", "metric", "generation", "opt_in", "notes"}
_GENERATION_KEYS = {"max_new_tokens", "stop"}
# How a task's held-out rows are scored (lm-evaluation-harness's names): rank classification over
# the options, or greedy generation scored by a metric.
OUTPUT_TYPES = ("multiple_choice", "generate_until")
DEFAULT_METRIC = "flan_qa"  # exact match and token F1: short generated answers
DEFAULT_MAX_NEW_TOKENS = 32
_SOURCE_KEYS = {"hub_id", "config", "mirror", "splits", "revision", "tabular", "eval_slice"}
# A dataset released with only a train split (FLAN's CoT sources) gets its evaluation rows as a
# seeded slice of that split, which its training role then leaves out (sources.load_split).
_EVAL_SLICE_KEYS = {"rows", "seed"}
# A table (scikit-learn's bundled copy, a CSV / parquet file, or a synthetic function) serialised
# into text rows; train_size: a nested subset of the training split (flan lift --train-sizes).
_TABULAR_KEYS = {"sklearn", "file", "function", "target", "kind", "names", "seed", "test_size", "digits",
                 "train_size"}
FEATURE_NAME_MODES = ("names", "generic", "shuffled")
_TEMPLATE_KEYS = {"id", "input", "target", "inverted", "options", "answer", "references", "fewshot"}
# How a template's exemplars are laid out in a few-shot prompt (FLAN v2's FewShotPattern; fewshot.py).
FEWSHOT_KEYS = ("input_prefix", "target_prefix", "delimiter", "separator")


@dataclass(frozen=True, eq=False)
class TemplateSpec:
    """One phrasing of a task: Jinja for the input and the target."""

    id: str
    input: str
    target: str | None
    inverted: bool = False
    options: tuple[str, ...] | str | None = None  # overrides the task's options
    answer: str | None = None  # overrides the task's answer expression
    references: str | None = None  # overrides the task's references expression
    line: int = 0  # line of the template's entry in its YAML file
    part_lines: dict[str, int] = field(default_factory=dict)  # "input"/"target" -> first line
    fewshot: dict[str, str] = field(default_factory=dict)  # few-shot pattern overrides (FEWSHOT_KEYS)


@dataclass(frozen=True)
class SourceSpec:
    """Where a task's rows come from: the Hub, or a local mirror of it."""

    hub_id: str
    config: str | None
    mirror: str
    splits: dict[str, str]  # role ("train" / "eval") -> split name
    revision: str | None = None
    tabular: dict[str, Any] | None = None  # a table source instead of the Hub (see sources/tables.py)
    eval_slice: dict[str, int] | None = None  # {rows, seed}: eval rows carved out of the train split


@dataclass(frozen=True)
class ClusterSpec:
    """Facts about a cluster, from its ``_cluster.yaml`` (defaults when the file is absent)."""

    name: str
    siblings: tuple[str, ...] = ()  # held out together (FLAN: nli <-> paraphrase)
    hub_category: str | None = None  # the Hub dataset card's task category
    metric: str = DEFAULT_METRIC  # metric of its generation tasks (an evaluate module)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    opt_in: bool = False  # trained on only when asked for (`flan build --with CLUSTER`)


@dataclass(frozen=True)
class Evaluation:
    """How a task's held-out rows are scored."""

    output_type: str  # multiple_choice | generate_until
    metric: str  # "acc" for multiple_choice, else an evaluate module name (flan_rouge, ...)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"output_type": self.output_type, "metric": self.metric,
                "max_new_tokens": self.max_new_tokens, "stop": list(self.stop)}


@dataclass(frozen=True)
class TaskSpec:
    """A dataset turned into an instruction task."""

    name: str
    cluster: str
    type: str
    source: SourceSpec
    fields: tuple[str, ...]
    templates: tuple[TemplateSpec, ...]
    path: Path
    also_in: tuple[str, ...] = ()
    license: str = "unknown"
    license_note: str = ""
    options: tuple[str, ...] | str | None = None  # a static list, or a Jinja expression
    answer: str | None = None  # Jinja expression giving the index of the correct option
    references: str | None = None  # Jinja expression giving a list of reference strings
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)  # names every template sees
    opt_in: bool = False  # trained on only when asked for (`flan build --with CLUSTER`)
    metric: str | None = None  # overrides the cluster's generation metric
    output_type: str | None = None  # overrides the one implied by the type
    generation: dict[str, Any] = field(default_factory=dict)  # max_new_tokens / stop overrides
    # tasks made from the same source text (WNLI and WSC: the Winograd schemas), either side
    shares_source_with: tuple[str, ...] = ()

    @property
    def clusters(self) -> tuple[str, ...]:
        """Every cluster the task belongs to (its own first)."""
        return (self.cluster, *self.also_in)

    @property
    def has_options(self) -> bool:
        return self.type in OPTION_TYPES

    def template(self, template_id: str) -> TemplateSpec:
        for template in self.templates:
            if template.id == template_id:
                return template
        known = ", ".join(t.id for t in self.templates)
        raise FlanError(f"task {self.name}: no template {template_id!r} (templates: {known})")


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that records the line of each mapping, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    # Where each string value's text starts (a block scalar's text starts below its '|').
    mapping["__lines__"] = {
        key.value: value.start_mark.line + 1 + (1 if getattr(value, "style", None) in ("|", ">") else 0)
        for key, value in node.value
        if isinstance(key, yaml.ScalarNode)
    }
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def default_templates_dir() -> Path:
    """``$FLAN_TEMPLATES_DIR``, else the shipped ``templates/`` (the checkout's, or the wheel's)."""
    from flan_builder.resources import shipped_dir

    env = os.environ.get(TEMPLATES_DIR_ENV)
    if env:
        return Path(env)
    return shipped_dir("templates")


def _read_text(path: Path) -> str:
    """A spec file's text; a file that is not UTF-8 is an error naming it, not a traceback."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _fail(path, line, f"not UTF-8 text (byte {data[exc.start]:#04x}); save the file "
                    "as UTF-8") from None


def _fail(path: Path, line: int | None, message: str) -> FlanError:
    where = f"{path}:{line}" if line else str(path)
    return FlanError(f"{where}: {message}")


def _check_keys(path: Path, data: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(k for k in data if k not in allowed and k not in ("__line__", "__lines__"))
    if unknown:
        raise _fail(
            path, data.get("__line__"),
            f"unknown key(s) {', '.join(unknown)} in {what} (allowed: {', '.join(sorted(allowed))})",
        )


def _options_value(path: Path, line: int, value: Any) -> tuple[str, ...] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise _fail(path, line, "'options' must be a non-empty list of strings or a Jinja expression")


def _parse_template(path: Path, task: str, data: Any, index: int) -> TemplateSpec:
    if not isinstance(data, dict):
        raise _fail(path, None, f"task {task}: template #{index + 1} is not a mapping")
    line = data.get("__line__", 0)
    _check_keys(path, data, _TEMPLATE_KEYS, f"template #{index + 1} of task {task}")
    template_id = data.get("id")
    if isinstance(template_id, (bool, int, float)):
        raise _fail(path, line, f"task {task}: template #{index + 1} has id {template_id!r}, "
                    "not a string (YAML reads yes/no/on/off and numbers as such); quote it")
    if not isinstance(template_id, str) or not template_id:
        raise _fail(path, line, f"task {task}: template #{index + 1} has no 'id'")
    text = data.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _fail(path, line, f"task {task}, template {template_id}: 'input' is missing or empty")
    target = data.get("target")
    if target is not None and not isinstance(target, str):
        raise _fail(path, line, f"task {task}, template {template_id}: 'target' must be a string")
    inverted = data.get("inverted", False)
    if not isinstance(inverted, bool):
        raise _fail(path, line, f"task {task}, template {template_id}: 'inverted' must be true/false")
    fewshot = data.get("fewshot") or {}
    if not isinstance(fewshot, dict):
        raise _fail(path, line, f"task {task}, template {template_id}: 'fewshot' must be a mapping of "
                    f"{', '.join(FEWSHOT_KEYS)}")
    _check_keys(path, fewshot, set(FEWSHOT_KEYS), f"fewshot of template {template_id} of task {task}")
    fewshot = {k: v for k, v in fewshot.items() if k in FEWSHOT_KEYS}
    for key, value in fewshot.items():
        if not isinstance(value, str):
            raise _fail(path, line, f"task {task}, template {template_id}: fewshot {key} must be a quoted "
                        f"string (e.g. \"Q: \" or \"\\n\"), got {value!r}")
    return TemplateSpec(
        id=template_id,
        input=text,
        target=target,
        inverted=inverted,
        options=_options_value(path, line, data.get("options")),
        answer=data.get("answer"),
        references=data.get("references"),
        line=line,
        part_lines={k: v for k, v in data.get("__lines__", {}).items() if k in ("input", "target")},
        fewshot=fewshot,
    )


def _shared_templates(path: Path, task: str, name: str) -> Any:
    """The ``templates:`` list of a shared file beside the spec (e.g. tabular serialisations)."""
    shared = path.parent / name
    if not name.startswith("_") or shared.suffix != ".yaml" or not shared.is_file():
        raise _fail(path, None, f"task {task}: 'templates: {name}' must name a shared _*.yaml file in "
                    f"{path.parent}")
    try:
        data = yaml.load(_read_text(shared), Loader=_LineLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise _fail(shared, None, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "templates" not in data:
        raise _fail(shared, None, "a shared template file holds one key, 'templates'")
    return data["templates"]


def _tabular_source(path: Path, task: str, value: Any) -> dict[str, Any] | None:
    """A table source: ``sklearn: iris`` or ``file: x.csv`` + ``target``, and its serialisation."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(path, None, f"task {task}: source.tabular must be a mapping")
    _check_keys(path, value, _TABULAR_KEYS, f"source.tabular of task {task}")
    table = {k: v for k, v in value.items() if not k.startswith("__")}
    if sum(key in table for key in ("sklearn", "file", "function")) != 1:
        raise _fail(path, value.get("__line__"), f"task {task}: source.tabular needs one of "
                    "'sklearn' (a bundled dataset name), 'file' (a CSV / parquet path) or 'function' "
                    "(a mapping: name or expression, dim, noise, low, high, n_train, n_test, data_seed)")
    if isinstance(table.get("function"), dict):
        table["function"] = {k: v for k, v in table["function"].items() if not str(k).startswith("__")}
    if "file" in table and not table.get("target"):
        raise _fail(path, value.get("__line__"), f"task {task}: source.tabular.file needs 'target' "
                    "(the column to predict)")
    table.setdefault("names", "names")
    if table["names"] not in FEATURE_NAME_MODES:
        raise _fail(path, value.get("__line__"), f"task {task}: source.tabular.names must be one of "
                    f"{', '.join(FEATURE_NAME_MODES)}")
    table.setdefault("seed", 0)
    table.setdefault("test_size", 0.2)
    table.setdefault("digits", 4)
    return table


def _eval_slice(path: Path, task: str, value: Any, splits: dict[str, str]) -> dict[str, int] | None:
    """``eval_slice: {rows: N, seed: S}``: the eval role is N seeded rows of the train split."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(path, None, f"task {task}: source.eval_slice must be a mapping {{rows: N, seed: S}}")
    _check_keys(path, value, _EVAL_SLICE_KEYS, f"source.eval_slice of task {task}")
    rows, seed = value.get("rows"), value.get("seed", 0)
    for key, number, least in (("rows", rows, 1), ("seed", seed, 0)):
        if not isinstance(number, int) or isinstance(number, bool) or number < least:
            raise _fail(path, value.get("__line__"), f"task {task}: source.eval_slice.{key} must be a whole "
                        f"number >= {least}, got {number!r}")
    if splits.get("train") is None or splits.get("eval") != splits["train"]:
        raise _fail(path, value.get("__line__"), f"task {task}: source.eval_slice carves the eval rows out "
                    "of the train split, so source.splits must name the same split for both (e.g. "
                    "{train: train, eval: train})")
    return {"rows": rows, "seed": seed}


def _generation(path: Path, what: str, value: Any) -> dict[str, Any]:
    """A ``generation:`` mapping (max_new_tokens, stop), checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, None, f"{what}: 'generation' must be a mapping (max_new_tokens, stop)")
    _check_keys(path, value, _GENERATION_KEYS, f"generation of {what}")
    out = {k: v for k, v in value.items() if not k.startswith("__")}
    if "max_new_tokens" in out and (not isinstance(out["max_new_tokens"], int) or out["max_new_tokens"] < 1):
        raise _fail(path, value.get("__line__"), f"{what}: generation.max_new_tokens must be a whole "
                    "number >= 1")
    if "stop" in out:
        stop = out["stop"]
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise _fail(path, value.get("__line__"), f"{what}: generation.stop must be a string or a "
                        "list of strings")
        out["stop"] = tuple(stop)
    return out


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (lines recorded for error messages)."""
    try:
        data = yaml.load(_read_text(path), Loader=_LineLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise _fail(path, None, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(path, None, f"{what} must be a YAML mapping")
    return data


def load_cluster(path: Path) -> ClusterSpec:
    """Read and validate one ``_cluster.yaml``."""
    data = _read_mapping(path, "a cluster file")
    _check_keys(path, data, _CLUSTER_KEYS, "cluster file")
    name = data.get("cluster", path.parent.name)
    if name != path.parent.name:
        raise _fail(path, data.get("__line__"), f"cluster {name!r} but the file is under "
                    f"{path.parent.name}/; fix 'cluster'")
    siblings = data.get("siblings") or []
    if not isinstance(siblings, list) or not all(isinstance(x, str) for x in siblings):
        raise _fail(path, data.get("__line__"), "'siblings' must be a list of cluster names")
    generation = _generation(path, f"cluster {name}", data.get("generation"))
    return ClusterSpec(
        name=name, siblings=tuple(siblings), hub_category=data.get("hub_category"),
        metric=str(data.get("metric") or DEFAULT_METRIC),
        max_new_tokens=generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        stop=generation.get("stop", ()), opt_in=bool(data.get("opt_in", False)),
    )


def _task_names(path: Path, task: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _fail(path, None, f"task {task}: '{key}' must be a list of task names")
    return tuple(value)


def load_spec(path: Path) -> TaskSpec:
    """Read and validate one task spec file."""
    data = _read_mapping(path, "a task spec")
    _check_keys(path, data, _SPEC_KEYS, "task spec")
    for key in ("task", "cluster", "type", "source", "fields", "templates"):
        if key not in data:
            raise _fail(path, data.get("__line__"), f"missing required key '{key}'")
    name = data["task"]
    if data["type"] not in TASK_TYPES:
        raise _fail(path, None, f"task {name}: type must be one of {', '.join(TASK_TYPES)}")
    source = data["source"]
    if not isinstance(source, dict):
        raise _fail(path, None, f"task {name}: 'source' must be a mapping")
    _check_keys(path, source, _SOURCE_KEYS, f"source of task {name}")
    splits = {k: v for k, v in (source.get("splits") or {}).items() if not k.startswith("__")}
    if not splits or set(splits) - {"train", "eval"}:
        raise _fail(path, source.get("__line__"), f"task {name}: source.splits needs 'train' and/or 'eval'")
    if splits.get("train") is not None and splits.get("eval") == splits["train"] \
            and source.get("eval_slice") is None:  # every evaluated row would also be trained on
        raise _fail(path, source.get("__line__"), f"task {name}: source.splits uses split "
                    f"{splits['train']!r} for both train and eval; add source.eval_slice: "
                    "{rows: N, seed: 0} to hold N rows of it out of training")
    fields = data["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise _fail(path, None, f"task {name}: 'fields' must be a list of field names")
    clash = sorted(set(fields) & set(RESERVED_NAMES))
    if clash:
        raise _fail(path, None, f"task {name}: field(s) {clash} clash with builder names {RESERVED_NAMES}")
    templates = data["templates"]
    if isinstance(templates, str):
        templates = _shared_templates(path, name, templates)
    if not isinstance(templates, list) or not templates:
        raise _fail(path, None, f"task {name}: 'templates' must be a non-empty list (or the name of "
                    "a shared template file beside the spec)")
    constants = data.get("constants") or {}
    if isinstance(constants, dict):
        constants = {k: v for k, v in constants.items() if not str(k).startswith("__")}
    if not isinstance(constants, dict) or not all(isinstance(v, str) for v in constants.values()):
        raise _fail(path, None, f"task {name}: 'constants' must map names to strings")
    clash = sorted(set(constants) & (set(fields) | set(RESERVED_NAMES)))
    if clash:
        raise _fail(path, None, f"task {name}: constant(s) {clash} clash with field or builder names")
    parsed = tuple(_parse_template(path, name, t, i) for i, t in enumerate(templates))
    first_line: dict[str, int] = {}
    for template in parsed:
        if template.id in first_line:  # two phrasings would merge under one id in the build
            raise _fail(path, template.line, f"task {name}: template id {template.id!r} is used twice "
                        f"(first at line {first_line[template.id]}); give each template its own id")
        first_line[template.id] = template.line
    spec = TaskSpec(
        name=name,
        cluster=data["cluster"],
        also_in=tuple(data.get("also_in") or ()),
        type=data["type"],
        source=SourceSpec(
            hub_id=source.get("hub_id", ""),
            config=source.get("config"),
            mirror=source.get("mirror", name),
            splits=splits,
            revision=source.get("revision"),
            tabular=_tabular_source(path, name, source.get("tabular")),
            eval_slice=_eval_slice(path, name, source.get("eval_slice"), splits),
        ),
        fields=tuple(fields),
        templates=parsed,
        path=path,
        license=str(data.get("license", "unknown")),
        license_note=str(data.get("license_note", "")),
        options=_options_value(path, data.get("__line__", 0), data.get("options")),
        answer=data.get("answer"),
        references=data.get("references"),
        notes=str(data.get("notes", "")).strip(),
        constants=constants,
        opt_in=bool(data.get("opt_in", False)),
        metric=data.get("metric"),
        output_type=data.get("output_type"),
        generation=_generation(path, f"task {name}", data.get("generation")),
        shares_source_with=_task_names(path, name, "shares_source_with", data.get("shares_source_with")),
    )
    if spec.output_type is not None and spec.output_type not in OUTPUT_TYPES:
        raise _fail(path, None, f"task {name}: output_type must be one of {', '.join(OUTPUT_TYPES)}")
    if spec.output_type == "multiple_choice" and not spec.has_options:
        raise _fail(path, None, f"task {name}: output_type multiple_choice needs a task with options")
    if spec.has_options and spec.options is None:
        raise _fail(path, None, f"task {name}: a {spec.type} task needs 'options'")
    if spec.has_options and spec.answer is None:
        raise _fail(path, None, f"task {name}: a {spec.type} task needs 'answer'")
    if spec.type == "generation" and spec.references is None:
        raise _fail(path, None, f"task {name}: a generation task needs 'references'")
    return spec


@dataclass(frozen=True)
class Registry:
    """Every task found under a templates directory, keyed by name."""

    tasks: dict[str, TaskSpec]
    root: Path
    cluster_files: dict[str, ClusterSpec] = field(default_factory=dict)
    roots: tuple[Path, ...] = ()  # the search path, first folder first
    shadowed: dict[str, Path] = field(default_factory=dict)  # task -> the later spec it hides

    def relative_path(self, spec: TaskSpec) -> str:
        """The spec file's path inside the templates folder that holds it."""
        for folder in self.roots or (self.root,):
            try:
                return str(spec.path.relative_to(folder))
            except ValueError:
                continue
        return str(spec.path)

    @property
    def clusters(self) -> list[str]:
        return sorted({c for spec in self.tasks.values() for c in spec.clusters})

    def cluster_info(self, cluster: str) -> ClusterSpec:
        """The cluster's facts (defaults for a cluster without a ``_cluster.yaml``)."""
        return self.cluster_files.get(cluster) or ClusterSpec(cluster)

    def siblings(self, cluster: str) -> set[str]:
        """Clusters held out with ``cluster``: named by either side, and present here."""
        named = set(self.cluster_info(cluster).siblings)
        named |= {c.name for c in self.cluster_files.values() if cluster in c.siblings}
        return named & set(self.clusters) - {cluster}

    def shares_source(self, name: str) -> set[str]:
        """Tasks made from the same source text as ``name`` (``shares_source_with``, either side)."""
        named = set(self.tasks[name].shares_source_with)
        named |= {t.name for t in self.tasks.values() if name in t.shares_source_with}
        return named - {name}

    def is_opt_in(self, spec: TaskSpec) -> bool:
        return spec.opt_in or self.cluster_info(spec.cluster).opt_in

    def evaluation(self, spec: TaskSpec) -> Evaluation:
        """How the task's held-out rows are scored: its own keys, else its cluster's, else defaults."""
        cluster = self.cluster_info(spec.cluster)
        output_type = spec.output_type or ("multiple_choice" if spec.has_options else "generate_until")
        metric = "acc" if output_type == "multiple_choice" else (spec.metric or cluster.metric)
        return Evaluation(output_type, metric,
                          spec.generation.get("max_new_tokens", cluster.max_new_tokens),
                          tuple(spec.generation.get("stop", cluster.stop)))

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise FlanError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(self.tasks))}")
        return self.tasks[name]

    def in_cluster(self, cluster: str) -> list[TaskSpec]:
        return [s for s in self.tasks.values() if cluster in s.clusters]

    def check_cluster(self, cluster: str) -> str:
        if cluster not in self.clusters:
            raise FlanError(
                f"unknown cluster {cluster!r}; valid clusters: {', '.join(self.clusters)}"
            )
        return cluster


def load_registry(root: Path | Sequence[Path] | None = None) -> Registry:
    """Discover and validate every ``<cluster>/<task>.yaml`` under ``root``.

    ``root`` may be a search path: a task (or ``_cluster.yaml``) in an earlier folder
    shadows one of the same name in a later folder, so a user's folder placed before the
    shipped templates adds tasks to them or replaces single ones.
    """
    if root is None:
        roots = [default_templates_dir()]
    elif isinstance(root, (str, Path)):
        roots = [Path(root)]
    else:
        roots = [Path(r) for r in root]
    tasks: dict[str, TaskSpec] = {}
    clusters: dict[str, ClusterSpec] = {}
    shadowed: dict[str, Path] = {}
    for folder in roots:
        if not folder.is_dir():
            raise FlanError(f"templates directory {folder} not found; pass --templates-dir or set "
                            f"{TEMPLATES_DIR_ENV}")
        for path in sorted(folder.glob(f"*/{CLUSTER_FILE}")):
            if path.is_file():
                clusters.setdefault(path.parent.name, load_cluster(path))
        here: dict[str, TaskSpec] = {}
        for path in sorted(folder.glob("*/*.yaml")):
            if path.name.startswith("_"):  # cluster facts and shared pieces (serialisations), not tasks
                continue
            if not path.is_file():
                raise FlanError(f"{path} is a folder, not a task spec; rename it (a spec is a file "
                                "<cluster>/<task>.yaml)")
            spec = load_spec(path)
            if spec.cluster != path.parent.name:
                raise _fail(path, None, f"task {spec.name}: cluster {spec.cluster!r} but the file is "
                            f"under {path.parent.name}/; move the file or fix 'cluster'")
            if spec.name in here:
                raise _fail(path, None, f"task {spec.name} is also defined in {here[spec.name].path}")
            here[spec.name] = spec
        for name, spec in here.items():
            if name in tasks:
                shadowed[name] = spec.path  # an earlier folder on the search path wins
            else:
                tasks[name] = spec
    if not tasks:
        raise FlanError(f"no task specs (<cluster>/<task>.yaml) found under {', '.join(map(str, roots))}")
    for spec in tasks.values():
        unknown = [name for name in spec.shares_source_with if name not in tasks]
        if unknown:
            raise _fail(spec.path, None, f"task {spec.name}: shares_source_with names unknown "
                        f"task(s) {', '.join(unknown)}; valid tasks: {', '.join(sorted(tasks))}")
    return Registry(tasks=dict(sorted(tasks.items())), root=roots[0], cluster_files=clusters,
                    roots=tuple(roots), shadowed=shadowed)

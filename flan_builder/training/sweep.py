"""Sweep recipes: one recipe file, several training runs that differ in one setting.

FLAN's ablations are sweeps: the number of training clusters, the number of templates per
dataset, the prompt style. A recipe with ``sweep:`` lists its points, each a name and the
settings it changes (keys as ``--set`` takes them)::

    sweep:
      - name: c1
        set: {dataset.build.train_clusters: [coreference]}
      - name: c2
        set: {dataset.build.train_clusters: [coreference, translation]}

Each point is its own run: its name, output and dataset path get ``-<name>`` appended (unless
the point sets them), so points never share a folder, and everything else (model, steps, seed,
held-out cluster) is the recipe's, so they differ only where the point says. Command-line
overrides apply to every point; one that sets a key a point sets is an error.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.training.recipe import (
    Recipe,
    apply_overrides,
    parse_override,
    read_recipe_file,
    validate_recipe,
)

_POINT_KEYS = {"name", "set", "description"}
_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def sweep_points(data: dict[str, Any], source: str) -> list[tuple[str, dict[str, Any]]] | None:
    """The recipe's points as (name, {dotted key: value}), checked; None for a one-run recipe."""
    points = data.get("sweep")
    if points is None:
        return None
    if not isinstance(points, list) or not points:
        raise FlanError(f"{source}: sweep must be a non-empty list of points "
                        "({name: ..., set: {key: value}})")
    out: list[tuple[str, dict[str, Any]]] = []
    for number, point in enumerate(points, 1):
        where = f"{source}: sweep point #{number}"
        if not isinstance(point, dict):
            raise FlanError(f"{where} must be a mapping with name and set")
        unknown = sorted(set(point) - _POINT_KEYS)
        if unknown:
            raise FlanError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (a point has "
                            f"{', '.join(sorted(_POINT_KEYS))})")
        name = point.get("name")
        if not isinstance(name, str) or not _POINT_NAME.fullmatch(name):
            raise FlanError(f"{where}: name must be a short word of letters, digits, '-', '_' or '.' "
                            f"(it ends the run's folder names), got {name!r}")
        if name in [n for n, _ in out]:
            raise FlanError(f"{where}: name {name!r} is used twice; give each point its own name")
        settings = point.get("set") or {}
        if not isinstance(settings, dict) or not all(isinstance(k, str) and k for k in settings):
            raise FlanError(f"{where} ({name}): set must map recipe keys (as --set takes them, e.g. "
                            "dataset.build.max_templates) to values")
        if any(key == "sweep" or key.startswith("sweep.") for key in settings):
            raise FlanError(f"{where} ({name}): a point cannot set the sweep itself")
        out.append((name, dict(settings)))
    return out


def _joined(value: Any, name: str) -> Any:
    return f"{value}-{name}" if isinstance(value, str) and value else value


def load_runs(path: Path, overrides: list[str] | None = None, point: str | None = None) -> list[Recipe]:
    """The runs a recipe file describes: one, or one per sweep point (``point``: only that one)."""
    overrides = list(overrides or [])
    source = str(path)
    raw = read_recipe_file(path)
    points = sweep_points(raw, source)
    if points is None:
        if point is not None:
            raise FlanError(f"--point {point}: {source} is not a sweep (it has no sweep: list); drop --point")
        return [validate_recipe(apply_overrides(raw, overrides), source, overrides)]
    names = [name for name, _ in points]
    if point is not None and point not in names:
        raise FlanError(f"--point {point}: {source} has no such point; its points: {', '.join(names)}")
    swept = {key for _, settings in points for key in settings}
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in swept:
            raise FlanError(f"--set {key}: {source} sets {key} per sweep point; change it in the file, "
                            "or run one point with --point NAME and a recipe of your own")
    base = apply_overrides({k: v for k, v in raw.items() if k != "sweep"}, overrides)
    base_name = base.get("name") or Path(source).stem
    runs = []
    for name, settings in points:
        if point is not None and name != point:
            continue
        data = copy.deepcopy(base)
        data["name"] = f"{base_name}-{name}"
        data["output"] = _joined(data.get("output"), name)
        if isinstance(data.get("dataset"), dict):
            data["dataset"]["path"] = _joined(data["dataset"].get("path"), name)
        # JSON is YAML: the point's values go through the same parser as a --set on the command line,
        # and the run records them as overrides.
        assigned = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
        data = apply_overrides(data, assigned)
        runs.append(validate_recipe(data, f"{source} (point {name})", overrides + assigned))
    return runs


def run_complete(recipe: Recipe) -> bool:
    """True when the run's output is finished (a sweep skips it: runs resume point by point)."""
    from flan_builder.training.job import RUN_MANIFEST

    return (Path(recipe.output) / RUN_MANIFEST).is_file()


def has_checkpoint(recipe: Recipe) -> bool:
    """True when an interrupted run of this point left a checkpoint to resume from."""
    from flan_builder.training.job import last_checkpoint
    from flan_builder.workdir import partial_dir

    return last_checkpoint(partial_dir(Path(recipe.output))) is not None


def check_build(recipe: Recipe, registry: Any) -> None:
    """The held-out rules applied to the recipe's build options (a cluster or task name that
    does not exist fails here, not when the build starts); nothing when the dataset exists."""
    from flan_builder.heldout import plan_split

    options = recipe.build
    if options is None or Path(recipe.dataset_path).exists():
        return
    plan_split(registry, recipe.heldout, train_clusters=options["train_clusters"], tasks=options["tasks"],
               with_clusters=options["with_clusters"], num_train_clusters=options["num_train_clusters"])

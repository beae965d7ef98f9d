"""Where the shipped data lives: task specs (``templates/``), training recipes (``train/``) and
evaluation suites (``eval/``), and how a recipe or suite is named on the command line.

In a checkout (an editable install included) they are the checkout's own top-level folders, so
an edit shows at once. In an installed wheel they are package data under
``flan_builder/_shipped/`` (pyproject.toml maps the top-level folders there), found through
``importlib.resources``. Nothing else in the package walks up from its own source file.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from flan_builder.errors import FlanError

FOLDERS = ("templates", "train", "eval")
SHIPPED = "_shipped"  # the package folder that holds FOLDERS in a wheel
LIFT_RECIPE_NAME = "lift"  # flan lift's default training recipe, train/lift.yaml
_PROJECT_NAME = 'name = "flan-builder"'


def checkout_root() -> Path | None:
    """The checkout this package runs from, or None when it is installed (site-packages)."""
    root = Path(__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    # Our own pyproject beside the package, not some other project's (a vendored copy).
    if _PROJECT_NAME in pyproject and all((root / folder).is_dir() for folder in FOLDERS):
        return root
    return None


def shipped_dir(folder: str) -> Path:
    """The folder ``templates``, ``train`` or ``eval``: the checkout's own, else the wheel's copy."""
    if folder not in FOLDERS:
        raise ValueError(f"unknown shipped folder {folder!r}")
    root = checkout_root()
    if root is not None:
        return root / folder
    data = importlib.resources.files("flan_builder").joinpath(SHIPPED, folder)
    if not isinstance(data, Path):  # pip installs unzipped; a zipped import has no folder to glob
        raise FlanError(f"flan-builder's {folder}/ is inside an archive ({data}); install the "
                        "package unzipped (pip install flan-builder)")
    return data


# -- recipes and suites by name ------------------------------------------------------------------

# Which command runs a shipped file: "train", "llm2llm" and "compare" recipes live in train/, suites in
# eval/.
KINDS = {"train": "train", "llm2llm": "train", "compare": "train", "eval": "eval"}


@dataclass(frozen=True)
class Shipped:
    """One shipped recipe or suite: its name (the file's stem), kind, file and its settings."""

    name: str
    kind: str  # train, llm2llm, compare or eval: the flan subcommand that runs it
    path: Path
    data: dict

    def purpose(self, siblings: Iterable[str] = ()) -> str:
        """One line: what the file holds out (``siblings``: the clusters held out with it), or
        what it is for."""
        d = self.data
        if self.kind == "eval":
            models = d.get("models") or []
            names = [m if isinstance(m, str) else str(m.get("name", "?")) for m in models]
            rows = f"{d['limit']} rows per dataset" if d.get("limit") else "every row"
            return f"zero-shot: {' vs '.join(names)} on {d.get('data')}, {rows}"
        if self.kind == "llm2llm":
            teacher, student = d.get("teacher") or {}, d.get("student") or {}
            return (f"LLM2LLM on {d.get('task')}: seed {d.get('seed_size')}, {d.get('iterations')} "
                    f"iterations, student {student.get('model')}, "
                    f"teacher {teacher.get('endpoint') or teacher.get('model')}")
        sft, peft = d.get("sft") or {}, d.get("peft") or {}
        if self.kind == "compare":
            compare = d.get("compare") or {}
            methods = compare.get("methods") or ["every method"]
            shots = (compare.get("eval") or {}).get("shots")
            icl = f" and in-context k={','.join(map(str, shots))}" if shots else ""
            return (f"{', '.join(methods)}{icl} on held-out {d.get('heldout')}: {d.get('model')}, "
                    f"{sft.get('max_steps')} steps each -> {d.get('output')}")
        length = (f"{sft['max_steps']} steps" if (sft.get("max_steps") or -1) > 0
                  else f"{sft.get('num_train_epochs')} epochs")
        how = f"{d.get('model')}, {peft.get('method', 'lora')}, {length}"
        if self.name == LIFT_RECIPE_NAME:
            return f"flan lift's default recipe (one table's own train/test split): {how}"
        if d.get("heldout") == "none":
            return f"holds out no cluster: {how} -> {d.get('output')}"
        also = f" (drops {', '.join(sorted(siblings))} from training too)" if siblings else ""
        points = d.get("sweep")
        if isinstance(points, list):  # a sweep recipe (training/sweep.py): one run per point
            names = ",".join(str(p.get("name")) for p in points if isinstance(p, dict))
            return (f"sweep of {len(points)} runs, holds out {d.get('heldout')}{also}: {how} each "
                    f"-> {d.get('output')}-{{{names}}}")
        return f"holds out {d.get('heldout')}{also}: {how} -> {d.get('output')}"


def _kind_of(folder: str, data: dict) -> str:
    if folder == "eval":
        return "eval"
    if "compare" in data:  # tuning methods side by side (flan compare)
        return "compare"
    return "llm2llm" if "task" in data else "train"  # an LLM2LLM recipe names one task


def shipped(kind: str | None = None) -> list[Shipped]:
    """Every shipped recipe and suite (of one kind), sorted by name."""
    found = []
    for folder in ("train", "eval"):
        for path in sorted(shipped_dir(folder).glob("*.yaml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            data = data if isinstance(data, dict) else {}
            item = Shipped(path.stem, _kind_of(folder, data), path, data)
            if kind is None or item.kind == kind:
                found.append(item)
    return found


def resolve(arg: str, kind: str) -> Path:
    """A recipe / suite argument as a file: an existing path as given, else a shipped name.

    ``flan train heldout-nli`` runs the shipped ``train/heldout-nli.yaml`` from any directory; a
    path (``train/heldout-nli.yaml``, ``my.yaml``) is read as before.
    """
    path = Path(arg)
    if path.is_file():
        return path
    everything = shipped()
    items = {item.name: item for item in everything if item.kind == kind}
    if arg in items:
        return items[arg].path
    what = "suite" if kind == "eval" else "recipe"
    if path.suffix in (".yaml", ".yml") or "/" in arg or "\\" in arg:
        hint = f"; the shipped one runs by name: flan {kind} {path.stem}" if path.stem in items else ""
        raise FlanError(f"{what} {arg} not found{hint} (`flan recipes` lists the shipped ones)")
    other = next((item for item in everything if item.name == arg), None)
    if other is not None:
        label = {"train": "a training recipe", "llm2llm": "an LLM2LLM recipe", "eval": "an evaluation suite",
                 "compare": "a comparison of tuning methods"}
        raise FlanError(f"{arg} is {label[other.kind]}: run it with flan {other.kind} {arg}")
    raise FlanError(f"unknown {what} {arg!r}: not a file and not a shipped {what}; known: "
                    f"{', '.join(items)} (`flan recipes` describes them)")

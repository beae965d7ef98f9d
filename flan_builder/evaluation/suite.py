"""Evaluation suites: ``eval/<name>.yaml`` names the models, data, rows and templates of a report.

A suite is to ``flan eval`` what a recipe is to ``flan train``: ``flan eval eval/heldout-nli.yaml``
runs it, and any flag given on the command line overrides the suite's value.

```yaml
data: build/heldout-nli            # a built dataset with a heldout split
out: reports/heldout-nli
models:                            # the first is the base every other is compared with
  - smollm2-135m
  - runs/heldout-nli
  - proxy: {base: smollm2-135m, expert: runs/rte, anti: smollm2-135m, alpha: 1.0}
direct: runs/heldout-nli           # optional: the directly tuned model for % gap closed
limit: 100                         # rows per dataset (seeded sample order of the build)
templates: null                    # first K templates per dataset (null: all)
template: []                       # only template ids containing one of these
tasks: []                          # only these tasks
options: with                      # with | without | both
shots: 0                           # zero-shot (FLAN's protocol); K: K exemplars from each task's train split
shots_from: task                   # task: the held-out task's train split; mixture: the build's training rows
cot: none                          # zero-shot: "Let's think step by step." then the answer (cot / math tasks)
separator: null                    # between prompt and option (null: the build's, "\n\n"); " ": lm-eval's
log_samples: false                 # samples/<model>/<task>/<template>.jsonl: every row's scores
batch_size: auto
metric_from_hub: false
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flan_builder.errors import FlanError
from flan_builder.evaluation.shots import SHOT_SOURCES
from flan_builder.lm.load import ModelSpec, proxy_spec

OPTIONS = {"with": (True,), "without": (False,), "both": (True, False)}
_KEYS = {"data", "out", "models", "direct", "limit", "templates", "template", "tasks", "options", "shots",
         "shots_from", "batch_size", "metric_from_hub", "separator", "log_samples", "cot"}
_PROXY_KEYS = {"base", "expert", "anti", "alpha", "level"}


@dataclass
class EvalConfig:
    """One evaluation: every model on exactly the same held-out rows."""

    models: list[ModelSpec]
    data: Path
    out: Path
    limit: int | None = None
    templates: int | None = None
    template_filter: list[str] | None = None
    options: tuple[bool, ...] = (True,)
    batch_size: int | str = "auto"
    metric_from_hub: bool = False
    overwrite: bool = False
    tasks: list[str] | None = None
    shots: int = 0
    shots_from: str = "task"  # task: each held-out task's train split; mixture: the build's train split
    direct: str | None = None  # the directly tuned model, for proxy-tuning's % gap closed
    source: str | None = None  # the suite file, when there is one
    separator: str | None = None  # between prompt and option; None: the build's (its manifest)
    log_samples: bool = False  # write every row's option scores and predictions
    cot: str = "none"  # zero-shot: Kojima et al.'s two-stage chain of thought on answer-reading tasks

    def check(self) -> None:
        """Settings that cannot run are one-line errors before any model loads."""
        if not self.models:
            raise FlanError("no model to evaluate: give --model (repeatable) or a suite's models:")
        if self.limit is not None and self.limit < 1:
            raise FlanError("--limit must be at least 1 (rows per dataset)")
        if self.templates is not None and self.templates < 1:
            raise FlanError("--templates must be at least 1")
        if self.shots < 0:
            raise FlanError(f"--shots {self.shots}: give 0 (zero-shot, FLAN's protocol) or K >= 1 exemplars "
                            "per prompt from each held-out task's train split")
        if self.shots_from not in SHOT_SOURCES:
            raise FlanError(f"shots_from {self.shots_from!r}: give task (each held-out task's own train "
                            "split) or mixture (the built dataset's training rows)")


def _model_entry(path: Path, entry: Any) -> ModelSpec:
    if isinstance(entry, str) and entry:
        return entry
    if isinstance(entry, dict) and set(entry) == {"proxy"} and isinstance(entry["proxy"], dict):
        settings = entry["proxy"]
        unknown = sorted(set(settings) - _PROXY_KEYS)
        if unknown or not {"base", "expert", "anti"} <= set(settings):
            raise FlanError(f"{path}: a proxy model needs base, expert and anti (and optionally alpha, "
                            f"level){'; unknown: ' + ', '.join(unknown) if unknown else ''}")
        return proxy_spec(settings["base"], settings["expert"], settings["anti"], settings.get("alpha", 1.0),
                          settings.get("level", "token"))
    raise FlanError(f"{path}: each entry of models: is a model name or {{proxy: {{base, expert, anti, "
                    f"alpha}}}}, got {entry!r}")


def load_suite(path: Path) -> dict[str, Any]:
    """The suite's settings as EvalConfig keyword arguments (checked, paths as given)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FlanError(f"evaluation suite {path} could not be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise FlanError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FlanError(f"{path}: an evaluation suite is a YAML mapping (see eval/heldout-nli.yaml)")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise FlanError(f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    if data.get("options", "with") not in OPTIONS:
        raise FlanError(f"{path}: options must be one of {', '.join(OPTIONS)}")
    settings: dict[str, Any] = {"source": str(path)}
    if "models" in data:
        if not isinstance(data["models"], list):
            raise FlanError(f"{path}: models: must be a list")
        settings["models"] = [_model_entry(path, m) for m in data["models"]]
    for key in ("data", "out"):
        if data.get(key):
            settings[key] = Path(data[key])
    for key in ("limit", "templates", "shots"):
        if data.get(key) is not None:
            if not isinstance(data[key], int) or isinstance(data[key], bool):
                raise FlanError(f"{path}: {key} must be a whole number")
            settings[key] = data[key]
    for key, name in (("template", "template_filter"), ("tasks", "tasks")):
        if data.get(key):
            settings[name] = [str(v) for v in data[key]]
    if "options" in data:
        settings["options"] = OPTIONS[data["options"]]
    if data.get("direct"):
        settings["direct"] = str(data["direct"])
    if "batch_size" in data:
        settings["batch_size"] = data["batch_size"]
    if "metric_from_hub" in data:
        settings["metric_from_hub"] = bool(data["metric_from_hub"])
    if data.get("separator") is not None:
        if not isinstance(data["separator"], str):
            raise FlanError(f'{path}: separator must be a string (e.g. " " or "\\n\\n", quoted)')
        settings["separator"] = data["separator"]
    if "log_samples" in data:
        settings["log_samples"] = bool(data["log_samples"])
    if data.get("shots_from") is not None:
        settings["shots_from"] = str(data["shots_from"])
    if data.get("cot") is not None:
        from flan_builder.evaluation.cot import COT_MODES

        if data["cot"] not in COT_MODES:
            raise FlanError(f"{path}: cot must be one of {', '.join(COT_MODES)}")
        settings["cot"] = data["cot"]
    return settings

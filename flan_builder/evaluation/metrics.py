"""Evaluation metrics as data: each shipped ``evaluate`` module's folder carries a ``metric.yaml``.

``metric.yaml`` names the Hub module that ``--metric-from-hub`` uses instead (or null), the
keys to report (the first is the headline), which keys are errors (lower is better), and whether
it reads an answer out of reasoning (``extracts_answer``: chain of thought).
Rank classification's ``acc`` is built in. A new metric is one new folder; no Python edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from flan_builder.errors import FlanError

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
RANK_CLASSIFICATION = "acc"


@dataclass(frozen=True)
class Metric:
    """A metric module: where it loads from and what it reports."""

    name: str
    keys: tuple[str, ...]
    hub: str | None = None
    lower_is_better: frozenset[str] = frozenset()
    extracts_answer: bool = False  # reads an answer out of reasoning (flan_cot): `flan eval --cot` applies

    @property
    def path(self) -> Path:
        return METRICS_DIR / self.name


@cache
def metric(name: str) -> Metric:
    """The shipped metric ``name`` (``acc``: rank classification)."""
    if name == RANK_CLASSIFICATION:
        return Metric(name, ("acc", "acc_norm"))
    facts = METRICS_DIR / name / "metric.yaml"
    if not facts.is_file():
        known = sorted(p.parent.name for p in METRICS_DIR.glob("*/metric.yaml"))
        raise FlanError(f"unknown metric {name!r}; shipped metrics: "
                        f"{', '.join([RANK_CLASSIFICATION, *known])}")
    data = yaml.safe_load(facts.read_text(encoding="utf-8")) or {}
    return Metric(name, tuple(data["keys"]), data.get("hub"), frozenset(data.get("lower_is_better") or ()),
                  bool(data.get("extracts_answer", False)))


@cache
def _error_keys() -> frozenset[str]:
    shipped = (p.parent.name for p in METRICS_DIR.glob("*/metric.yaml"))
    return frozenset().union(*(metric(name).lower_is_better for name in shipped))


def lower_is_better(key: str) -> bool:
    """Whether a reported key is an error (RMSE): best is lowest, and it is not averaged with scores."""
    return key in _error_keys()

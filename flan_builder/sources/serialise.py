"""Table rows -> the fields tabular templates read: ``features`` (name/value pairs) and the target.

Number format (the rule, documented in the README): keep ``digits`` significant digits
(4 by default), never fewer than the number's integer digits, never an exponent, trailing
zeros dropped. So 0.0012 -> "0.0012" (a fixed ``%.2f`` would give "0.00"), 0.07871 ->
"0.07871", 5.1 -> "5.1", 1001.0 -> "1001", 123456.7 -> "123457", 3 -> "3".

Feature-name modes (LIFT's ablation): ``names`` uses the real column names; ``generic``
uses x1, x2, ...; ``shuffled`` uses the real names permuted across the columns (a fixed
permutation per seed, with no name left in its own place when there are two or more).
"""

from __future__ import annotations

import math
import random
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.sources.tables import Table
from flan_builder.specs import FEATURE_NAME_MODES

MISSING = "missing"


def format_number(value: float | int, digits: int = 4) -> str:
    """``digits`` significant digits, positional notation, no trailing zeros (see module doc)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return MISSING
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - exponent, 0)
    quantum = Decimal(1).scaleb(-decimals)
    text = format(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_EVEN), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value, digits)
    return str(value)


def feature_names(names: list[str], mode: str, seed: int = 0) -> list[str]:
    """The names the text shows for each column under a feature-name mode."""
    if mode not in FEATURE_NAME_MODES:
        raise FlanError(f"feature-name mode must be one of {', '.join(FEATURE_NAME_MODES)} (got {mode!r})")
    if mode == "names":
        return list(names)
    if mode == "generic":
        return [f"x{i + 1}" for i in range(len(names))]
    if len(names) < 2:
        return list(names)
    rng = random.Random(f"shuffled-names:{seed}")
    order = list(range(len(names)))
    while True:  # a derangement: every column gets another column's name
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return [names[j] for j in order]


def serialise_rows(table: Table, mode: str = "names", seed: int = 0, digits: int = 4) -> list[dict[str, Any]]:
    """Every row of the table as template fields: features, label / target, target_text."""
    shown = feature_names(table.feature_names, mode, seed)
    out = []
    for values, target in zip(table.rows, table.target, strict=True):
        row: dict[str, Any] = {
            "features": [{"name": name, "value": format_value(v, digits)} for name, v in zip(shown, values,
                                                                                           strict=True)],
        }
        if table.kind == "classification":
            row["label"] = target
        else:
            row["target"] = float(target)
            row["target_text"] = format_number(float(target), digits)
        out.append(row)
    return out


def tabular_split(spec: Any, split: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of a tabular spec's ``train`` or ``test`` split, serialised per its source settings."""
    from flan_builder.sources.tables import load_table, split_indices, train_subset

    source = spec.source.tabular
    table = load_table(source, base=spec.path.parent)
    if table.kind == "classification" and spec.type != "classification":
        raise FlanError(f"task {spec.name}: the table is a classification table but the spec's type is "
                        f"{spec.type}")
    if table.kind == "classification" and isinstance(spec.options, tuple) and \
            len(spec.options) != len(table.classes):
        raise FlanError(f"task {spec.name}: the spec lists {len(spec.options)} options but the table has "
                        f"{len(table.classes)} classes ({', '.join(table.classes)}); fix 'options'")
    train, test = split_indices(table, int(source["seed"]), source["test_size"])
    if split not in ("train", "test"):
        raise FlanError(f"task {spec.name}: a tabular source has splits 'train' and 'test', not {split!r}")
    if split == "train" and source.get("train_size"):  # a nested subset (flan lift --train-sizes)
        train = train_subset(table, train, int(source["train_size"]), int(source["seed"]))
    rows = serialise_rows(table, source["names"], int(source["seed"]), int(source["digits"]))
    chosen = train if split == "train" else test
    if split == "test" and table.clean_target is not None:  # a synthetic table: scored noise-free
        for i in chosen:
            rows[i]["target"] = float(table.clean_target[i])
            rows[i]["target_text"] = format_number(float(table.clean_target[i]), int(source["digits"]))
    return [rows[i] for i in chosen], f"{table.origin} ({split}, seed {source['seed']})"

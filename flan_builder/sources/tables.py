"""Tables for LIFT: scikit-learn's bundled datasets, a CSV / parquet file or a synthetic function
(``sources/functions.py``), checked and split.

A :class:`Table` holds the raw feature values, the target and what kind of task it is.
Splits are the LIFT protocol's: a seeded 80/20 split, stratified by class for
classification, so every method (LIFT and the scikit-learn baselines) sees the same rows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError

KINDS = ("classification", "regression")
# name -> (loader function, kind, keyword arguments). Diabetes comes unscaled: a language
# model reads "age is 59" better than the centred and scaled 0.038.
SKLEARN_DATASETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "iris": ("load_iris", "classification", {}),
    "wine": ("load_wine", "classification", {}),
    "breast_cancer": ("load_breast_cancer", "classification", {}),
    "digits": ("load_digits", "classification", {}),
    "diabetes": ("load_diabetes", "regression", {"scaled": False}),
}


@dataclass
class Table:
    """A table ready to serialise: features (raw values), target, and the task kind."""

    name: str
    kind: str  # classification / regression
    feature_names: list[str]
    rows: list[list[Any]]  # feature values per row (floats, ints or strings; None = missing)
    target: list[Any]  # class index (classification) or float (regression)
    classes: list[str]  # class names, in index order (empty for regression)
    origin: str  # where it came from, for messages and the manifest
    target_name: str = "target"
    # A synthetic table's noise-free targets: test rows are scored against these (LIFT's protocol),
    # training rows learn the noisy ``target``.
    clean_target: list[float] | None = None


def _import_sklearn() -> Any:
    try:
        import sklearn.datasets
    except ImportError:
        raise FlanError("tabular tasks need scikit-learn; install it with pip install "
                        "'flan-builder[eval]'") from None
    return sklearn.datasets


def load_sklearn(name: str) -> Table:
    """One of scikit-learn's bundled datasets (they ship inside the package: no download)."""
    if name not in SKLEARN_DATASETS:
        raise FlanError(f"unknown scikit-learn dataset {name!r}; bundled ones: "
                        f"{', '.join(SKLEARN_DATASETS)} (or pass --csv FILE --target COLUMN)")
    loader, kind, kwargs = SKLEARN_DATASETS[name]
    bunch = getattr(_import_sklearn(), loader)(**kwargs)
    names = [str(n).replace("_", " ") for n in bunch.feature_names]
    rows = [[_plain(v) for v in row] for row in bunch.data.tolist()]
    if kind == "classification":
        target = [int(t) for t in bunch.target]
        classes = [str(c) for c in bunch.target_names]
    else:
        target, classes = [float(t) for t in bunch.target], []
    return Table(name, kind, names, rows, target, classes, f"sklearn.datasets.{loader}")


def _plain(value: Any) -> Any:
    """Whole floats become ints (digits' pixel counts, diabetes' sex code): they read as '2'."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _read_frame(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise FlanError(f"table {path} not found")
    if path.stat().st_size == 0:
        raise FlanError(f"table {path} is empty; it needs a header row and data rows")
    try:
        if path.suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=None, engine="python")  # sniffs , ; or tab
    except pd.errors.EmptyDataError:
        raise FlanError(f"table {path} is empty; it needs a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise FlanError(f"table {path} could not be read ({str(exc).splitlines()[0]}); "
                        "pass a CSV with a header row, or a parquet file") from None
    if len(frame) == 0:
        raise FlanError(f"table {path} has a header but no data rows")
    return frame


def load_file(path: Path, target: str, kind: str | None = None) -> Table:
    """A CSV or parquet file with a header; ``target`` names the column to predict."""
    path = Path(path)
    frame = _read_frame(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    if target not in frame.columns:
        raise FlanError(f"table {path} has no target column {target!r} (columns: "
                        f"{', '.join(frame.columns)}); pass --target with one of them")
    if frame.shape[1] < 2:
        raise FlanError(f"table {path} has only the target column; it needs at least one feature")
    column = frame[target]
    if column.isna().any():
        first = int(column.isna().to_numpy().nonzero()[0][0])
        raise FlanError(f"table {path}: row {first + 2} (line in the file) has no value in the target "
                        f"column {target!r}; fill it or drop the row")
    numeric = _numeric(column)
    if kind is None:  # a numeric column with many distinct values is a regression target
        kind = "regression" if numeric is not None and column.nunique() > 20 else "classification"
    if kind not in KINDS:
        raise FlanError(f"--task must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind == "regression" and numeric is None:
        bad = next(v for v in column if _number(v) is None)
        raise FlanError(f"table {path}: the target column {target!r} holds {bad!r}, which is not a "
                        "number; regression needs numeric targets (use --task classification)")
    features = [c for c in frame.columns if c != target]
    rows = [[_cell(v) for v in values] for values in frame[features].itertuples(index=False)]
    if kind == "classification":
        labels = [_label(v) for v in column]
        classes = sorted(set(labels), key=_sort_key)
        if len(classes) < 2:  # nothing to classify (scikit-learn's baselines would raise)
            raise FlanError(f"{path}: column {target!r} has only one class ({classes[0]!r} in all "
                            f"{len(labels)} rows); a classification table needs at least two")
        index = {c: i for i, c in enumerate(classes)}
        target_values: list[Any] = [index[v] for v in labels]
    else:
        classes, target_values = [], [float(v) for v in numeric]
    return Table(path.stem, kind, features, rows, target_values, classes, str(path), target_name=target)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _numeric(column: Any) -> list[float] | None:
    values = [_number(v) for v in column]
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def _cell(value: Any) -> Any:
    """A feature value: None when missing, a number when it is one, else stripped text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        text = value.strip()
        number = _number(text)
        return _plain(number) if number is not None else (text or None)
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return _plain(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _label(value: Any) -> str:
    """A class label as text: 1.0 -> '1', ' yes ' -> 'yes'."""
    value = _cell(value)
    return str(value)


def _sort_key(label: str) -> tuple[int, float, str]:
    number = _number(label)
    return (0, number, "") if number is not None else (1, 0.0, label)


def split_indices(table: Table, seed: int, test_size: float | int = 0.2) -> tuple[list[int], list[int]]:
    """Seeded train/test row indices; stratified by class for classification.

    ``test_size``: a fraction of the rows, or (a whole number >= 1) a count of test rows.
    """
    from sklearn.model_selection import train_test_split

    counted = isinstance(test_size, int) and not isinstance(test_size, bool) and test_size >= 1
    if counted and test_size >= len(table.rows):
        raise FlanError(f"{table.name}: {test_size} test rows leave no training rows of {len(table.rows)}")
    if not counted and not 0 < test_size < 1:
        raise FlanError(f"test_size must be between 0 and 1 (got {test_size})")
    indices = list(range(len(table.rows)))
    stratify = None
    if table.kind == "classification":
        counts = Counter(table.target)
        n_test = int(test_size) if counted else math.ceil(test_size * len(indices))
        smallest = min(counts, key=counts.__getitem__)
        if counts[smallest] < 2:
            raise FlanError(f"{table.name}: class {table.classes[smallest]!r} has {counts[smallest]} row; "
                            "a stratified train/test split needs at least 2 rows per class (one on each "
                            "side); add rows or drop that class")
        if n_test < len(counts) or len(indices) - n_test < len(counts):
            raise FlanError(f"{table.name}: {len(indices)} rows cannot be split {1 - test_size:.0%}/"
                            f"{test_size:.0%} with every one of the {len(counts)} classes on both sides; "
                            "add rows or change the test size")
        stratify = table.target
    elif len(indices) < 5:
        raise FlanError(f"{table.name}: {len(indices)} rows are too few for a train/test split")
    train, test = train_test_split(indices, test_size=test_size, random_state=seed, stratify=stratify)
    return sorted(train), sorted(test)


def train_subset(table: Table, train: list[int], size: int, seed: int) -> list[int]:
    """The first ``size`` rows of one seeded order of ``train``: a larger size holds every smaller one.

    For classification the order starts with one row of each class, then follows each class's
    share (a row of a class with n training rows at positions 1/n, 2/n, ... of the way), so every
    prefix has every class and stays close to stratified. Returned sorted.
    """
    import random

    if size > len(train):
        raise FlanError(f"--train-sizes {size}: the training split of {table.name} has only {len(train)} "
                        f"rows (seed {seed}); use sizes up to {len(train)}")
    rng = random.Random(f"train-subset:{seed}")
    order = list(train)
    rng.shuffle(order)
    if table.kind == "classification":
        by_class: dict[Any, list[int]] = {}
        for index in order:
            by_class.setdefault(table.target[index], []).append(index)
        if size < len(by_class):
            raise FlanError(f"--train-sizes {size}: {table.name} has {len(by_class)} classes, so a training "
                            f"set needs at least {len(by_class)} rows (one per class)")
        firsts = [members[0] for members in by_class.values()]
        rng.shuffle(firsts)
        rest = sorted(((k / len(members), rng.random(), index) for members in by_class.values()
                       for k, index in enumerate(members) if k > 0))
        order = firsts + [index for _, _, index in rest]
    return sorted(order[:size])


def function_table(raw: dict[str, Any]) -> Table:
    """A LIFT synthetic-function table (``sources.functions`` draws its rows)."""
    from flan_builder.sources.functions import function_data

    data = function_data(raw)
    return Table(data["name"], "regression", data["features"], data["rows"], data["target"], [],
                 data["description"], target_name="y", clean_target=data["clean_target"])


def load_table(source: dict[str, Any], base: Path | None = None) -> Table:
    """The table a spec's ``source.tabular`` names (a relative file is relative to ``base``)."""
    if "sklearn" in source:
        return load_sklearn(source["sklearn"])
    if "function" in source:
        return function_table(source["function"])
    path = Path(source["file"])
    if base is not None and not path.is_absolute():
        path = base / path
    return load_file(path, source["target"], source.get("kind"))

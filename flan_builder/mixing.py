"""FLAN's caps and examples-proportional mixing, with seeded draws.

Each dataset contributes at most ``max_per_dataset`` distinct training rows (FLAN: 30,000).
Its mixing rate is its size capped at ``rate_cap`` (FLAN: 3,000), so large datasets do
not drown small ones. Without a total, a dataset contributes exactly its rate; with a
total, the total is shared out in proportion to the rates (largest remainder rounding),
cycling through a dataset's rows when it must give more than it has.
"""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_PER_DATASET = 30_000
DEFAULT_RATE_CAP = 3_000


@dataclass(frozen=True)
class MixingConfig:
    """Every number that decides how many examples each dataset gives."""

    max_per_dataset: int = DEFAULT_MAX_PER_DATASET
    rate_cap: int = DEFAULT_RATE_CAP
    total: int | None = None
    all_templates: bool = False
    max_templates: int | None = None


def task_rng(seed: int, task: str, purpose: str) -> random.Random:
    """A generator private to one task and purpose, so adding a task never reshuffles another."""
    return random.Random(f"{seed}/{task}/{purpose}")


def mixture_counts(sizes: dict[str, int], rate_cap: int, total: int | None) -> dict[str, int]:
    """How many training examples each dataset contributes."""
    rates = {task: min(size, rate_cap) for task, size in sizes.items()}
    if total is None:
        return rates
    rate_sum = sum(rates.values())
    if rate_sum == 0:
        return dict.fromkeys(rates, 0)
    exact = {task: total * rate / rate_sum for task, rate in rates.items()}
    counts = {task: int(value) for task, value in exact.items()}
    short = total - sum(counts.values())
    # Largest remainder; ties broken by name so the result never depends on dict order.
    by_remainder = sorted(exact, key=lambda t: (-(exact[t] - counts[t]), t))
    for task in by_remainder[:short]:
        counts[task] += 1
    return counts


def pool_indices(size: int, max_rows: int, rng: random.Random) -> list[int]:
    """The distinct rows a dataset may use: all of them, or a seeded sample of ``max_rows``."""
    if size <= max_rows:
        return list(range(size))
    return sorted(rng.sample(range(size), max_rows))


def draw_rows(pool: list[int], count: int, rng: random.Random) -> list[int]:
    """``count`` row indices from ``pool``: whole shuffled passes, then a partial one."""
    if not pool:  # every row of the task was dropped (contamination): nothing to draw
        return []
    drawn: list[int] = []
    while len(drawn) + len(pool) <= count:
        epoch = pool[:]
        rng.shuffle(epoch)
        drawn.extend(epoch)
    rest = count - len(drawn)
    if rest:
        drawn.extend(rng.sample(pool, rest))
    return drawn


def draw_templates(count: int, n_templates: int, rng: random.Random) -> list[int]:
    """One template index per example, uniformly at random."""
    return [rng.randrange(n_templates) for _ in range(count)]


def shuffled_positions(seed: int, count: int) -> np.ndarray:
    """Where each of ``count`` rows in plan order lands after the build's seeded shuffle.

    The shuffle is ``random.shuffle`` over the row numbers (the permutation it gives depends only on
    the generator and the length), done in a 4-byte array (8 past 2**31 rows) instead of a list of
    rows; the result is its inverse, in the same integer type: ``positions[u]`` is the output row of
    the ``u``-th row in plan order. Both arrays together take 8 bytes a row while this runs.
    """
    dtype, code = (np.int32, "i") if count < 2**31 else (np.int64, "q")
    order = array(code, range(count))
    task_rng(seed, "*", "shuffle").shuffle(order)
    plan_rows = np.frombuffer(order, dtype=dtype)
    positions = np.empty(count, dtype=dtype)
    step = 1 << 20  # the inverse a block at a time: no third array of the whole length
    for start in range(0, count, step):
        stop = min(count, start + step)
        positions[plan_rows[start:stop]] = np.arange(start, stop, dtype=dtype)
    return positions

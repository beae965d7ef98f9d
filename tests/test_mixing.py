"""Caps and examples-proportional mixing."""

from __future__ import annotations

from flan_builder.mixing import draw_rows, mixture_counts, pool_indices, task_rng


def test_rates_are_sizes_capped():
    counts = mixture_counts({"big": 50_000, "mid": 3_000, "small": 250}, 3_000, None)
    assert counts == {"big": 3_000, "mid": 3_000, "small": 250}


def test_total_is_shared_in_proportion_to_capped_rates_and_sums_exactly():
    counts = mixture_counts({"big": 50_000, "mid": 1_500, "small": 500}, 3_000, 10_001)
    assert sum(counts.values()) == 10_001
    assert counts["big"] == 6_001 or counts["big"] == 6_000  # 3000/5000 of the total
    assert abs(counts["mid"] - 3_000) <= 1 and abs(counts["small"] - 1_000) <= 1


def test_pool_is_capped_and_seeded():
    a = pool_indices(100_000, 30_000, task_rng(0, "t", "pool"))
    b = pool_indices(100_000, 30_000, task_rng(0, "t", "pool"))
    c = pool_indices(100_000, 30_000, task_rng(1, "t", "pool"))
    assert len(a) == 30_000 == len(set(a)) and a == sorted(a)
    assert a == b and a != c
    assert pool_indices(10, 30_000, task_rng(0, "t", "pool")) == list(range(10))


def test_drawing_more_than_the_pool_cycles_through_whole_passes():
    pool = list(range(7))
    drawn = draw_rows(pool, 17, task_rng(0, "t", "draw"))
    assert len(drawn) == 17
    assert sorted(drawn[:7]) == pool and sorted(drawn[7:14]) == pool
    assert len(set(drawn[14:])) == 3


def test_task_streams_are_independent():
    assert task_rng(0, "a", "draw").random() != task_rng(0, "b", "draw").random()
    assert task_rng(0, "a", "draw").random() == task_rng(0, "a", "draw").random()


def test_shuffled_positions_invert_random_shuffle_across_blocks_in_four_bytes_a_row():
    import numpy as np

    from flan_builder.mixing import shuffled_positions

    count = (1 << 20) + 5  # past the inverse's first block
    rows = list(range(count))
    task_rng(3, "*", "shuffle").shuffle(rows)  # what the in-memory build did to its rows
    positions = shuffled_positions(3, count)
    assert positions.dtype == np.int32
    assert np.array_equal(np.asarray(rows)[positions], np.arange(count))  # row u lands at positions[u]
    assert len(shuffled_positions(3, 0)) == 0 and shuffled_positions(3, 1).tolist() == [0]

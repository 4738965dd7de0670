"""How denoising work is cut between DiT ranks: contiguous, complete, balanced."""

from __future__ import annotations

import pytest

from pipeline.tpp.partition import (
    Unit,
    check_partition,
    from_json,
    make_partition,
    sink_layers,
    split_layers,
    split_steps,
    to_json,
)


def layer_steps(piece) -> int:
    return sum(len(u) for u in piece)


@pytest.mark.parametrize(("steps", "ranks"), [(4, 1), (4, 2), (4, 3), (4, 4), (3, 2), (2, 4)])
def test_whole_steps_are_contiguous_and_extra_steps_go_first(steps, ranks):
    p = split_steps(steps, 40, ranks)
    check_partition(p, steps, 40)
    assert all(u.start == 0 and u.stop == 40 for piece in p for u in piece)
    sizes = [len(piece) for piece in p]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert [u.step for piece in p for u in piece] == list(range(steps))


def test_four_steps_on_four_ranks_is_one_step_each():
    assert split_steps(4, 40, 4) == tuple((Unit(s, 0, 40),) for s in range(4))


@pytest.mark.parametrize(("steps", "ranks", "tail"), [(4, 4, 27.0), (4, 3, 0.0), (3, 2, 5.0)])
def test_layer_split_balances_work_counting_the_decode_on_the_last_rank(steps, ranks, tail):
    p = split_layers(steps, 40, ranks, tail)
    check_partition(p, steps, 40)
    work = [layer_steps(piece) for piece in p]
    work[-1] += tail
    assert max(work) - min(work) <= 1.5  # whole layers: within rounding


def test_layer_split_of_4_steps_on_4_gpus_with_the_decode_overlapped():
    # the decode costs 27 layers: (160 + 27) / 4 = 46.75 each, the last rank 20 + the decode
    p = split_layers(4, 40, 4, 27.0)
    assert [layer_steps(piece) for piece in p] == [47, 47, 46, 20]
    assert p[1] == (Unit(1, 7, 40), Unit(2, 0, 14))


def test_partition_checks_coverage_and_order():
    with pytest.raises(ValueError, match="contiguously"):
        check_partition(((Unit(1, 0, 4),), (Unit(0, 0, 4),)), 2, 4)
    with pytest.raises(ValueError, match="cover every"):
        check_partition(((Unit(0, 0, 4),),), 2, 4)
    with pytest.raises(ValueError, match="outside"):
        check_partition(((Unit(0, 0, 5),),), 1, 4)
    with pytest.raises(ValueError, match="unknown split"):
        make_partition("rows", 4, 4, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "p",
    [
        split_steps(4, 40, 4),
        split_layers(4, 40, 4, 27.0),
        split_layers(2, 40, 4),
        split_steps(2, 40, 4),
    ],
)
def test_every_sink_layer_is_saved_by_exactly_one_rank_that_holds_it(p):
    seen: list[int] = []
    for rank, piece in enumerate(p):
        mine = sink_layers(p, rank)
        held = {layer for u in piece for layer in u.layers}
        assert set(mine) <= held
        seen.extend(mine)
    assert sorted(seen) == list(range(40))


def test_partition_round_trips_through_json():
    p = split_layers(3, 8, 3, 2.0)
    assert from_json(to_json(p)) == p

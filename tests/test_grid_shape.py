"""The torch-free grid shape every layer shares: coordinates, group membership and validity,
checked against nested loops over (d, z, y, x) written out here."""

from __future__ import annotations

import itertools

import pytest

from axolab.grid_shape import GROUPS, GridShape, all_grids, parse_grids

# Which coordinates vary inside one group of each axis: (d, z, y, x) indices.
VARYING = {"x": (3,), "y": (2,), "z": (1,), "data": (0,), "batch": (0, 1),
           "model": (1, 2, 3), "world": (0, 1, 2, 3)}


def _cells(shape):
    D, Z, Y, X = shape
    return [c for c in itertools.product(range(D), range(Z), range(Y), range(X))]


@pytest.mark.parametrize("dims", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (2, 3, 2, 2),
                                  (3, 1, 4, 2)])
def test_groups_are_the_ranks_that_differ_only_along_the_axis(dims):
    shape = GridShape(*dims)
    cells = _cells(dims)  # position order: X fastest
    assert [shape.coords(p) for p in range(shape.world)] == cells
    assert [shape.position(c) for c in cells] == list(range(shape.world))
    for axis in GROUPS:
        fixed = [i for i in range(4) if i not in VARYING[axis]]
        expected = {}
        for p, c in enumerate(cells):
            expected.setdefault(tuple(c[i] for i in fixed), []).append(p)
        groups = shape.groups(axis)
        assert sorted(groups) == sorted(expected.values())
        assert all(len(g) == shape.size(axis) for g in groups)
        for group in groups:
            assert [shape.index_in(axis, shape.coords(p)) for p in group] == \
                list(range(len(group)))
            if len(group) > 1:  # neighbours sit `stride` positions apart for the four axes
                if axis in ("x", "y", "z", "data"):
                    assert group[1] - group[0] == shape.stride(axis)


def test_all_grids_and_refusals():
    assert sorted(g.dims for g in all_grids(4)) == sorted(
        d for d in itertools.product(range(1, 5), repeat=4) if d[0] * d[1] * d[2] * d[3] == 4)
    assert len(all_grids(8)) == 20 and len(all_grids(1)) == 1
    for bad in ([1, 1, 1], [1, 0, 1, 1], [1, 1, "2", 1], [True, 1, 1, 1], "1,1,1,1"):
        with pytest.raises(ValueError, match="grid must be four positive integers"):
            GridShape.of(bad)
    with pytest.raises(ValueError, match="grid dimension y must be a positive integer, got -1"):
        GridShape(1, 1, -1, 1)
    with pytest.raises(ValueError, match="position 8 is outside a grid of 8 ranks"):
        GridShape(2, 1, 2, 2).coords(8)
    with pytest.raises(ValueError, match="unknown grid axis 'w'"):
        GridShape(1, 1, 1, 1).groups("w")
    with pytest.raises(ValueError, match="positive integer, got 0"):
        all_grids(0)


def test_grids_parse_in_both_spellings():
    # "d,z,y,x" (config lists, command lines) and "DxZxYxX" (how tables print a grid).
    assert GridShape.parse(" 2, 1,3 ,4") == GridShape(2, 1, 3, 4) == GridShape.parse("2X1x3x4")
    assert GridShape.parse(str(GridShape(8, 16, 4, 2))) == GridShape(8, 16, 4, 2)
    assert parse_grids("1,1,2,2;2,1,1,2") == parse_grids("1x1x2x2,2x1x1x2") == \
        [GridShape(1, 1, 2, 2), GridShape(2, 1, 1, 2)]
    assert parse_grids("1,4,1,1") == [GridShape(1, 4, 1, 1)]
    for bad in ("1,2,3", "1x2x3", "0,1,1,1", "1,1,1,1,1", "ax1x1x1", "1.5,1,1,1"):
        with pytest.raises(ValueError, match="expected four positive integers"):
            GridShape.parse(bad)
    for bad in ("", "1,1,1,1;", ";1,1,1,1", "1x1x1x1,,1x1x1x2"):
        with pytest.raises(ValueError, match="expected d,z,y,x entries"):
            parse_grids(bad)

"""rank_agreement: per model and rank count, the Spearman correlation of predicted and measured
step times over the grids (NaN with fewer than three grids, as the scaling notebook says) and
how much slower than the measured best the predicted-best grid ran, on hand-made tables whose
answers are worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from axolab.scaling import rank_agreement


def _rows(model, ranks, grids, predicted, measured):
    return [{"model": model, "ranks": ranks, "grid": g, "predicted_step_s": p,
             "measured_step_s": m} for g, p, m in zip(grids, predicted, measured)]


def _by_group(result: pd.DataFrame) -> dict:
    assert not result.duplicated(["model", "ranks"]).any()
    return {(r["model"], int(r["ranks"])): r for r in result.to_dict("records")}


def test_spearman_and_gap_worked_by_hand():
    rows = (
        # Five grids, no ties. Predicted ranks 1..5; measured 1.3, 1.1, 1.6, 2.0, 1.8 rank
        # 2, 1, 3, 5, 4: d = -1, 1, 0, -1, 1, sum d^2 = 4, rho = 1 - 6*4 / (5*(25-1)) = 0.8.
        # The predicted best (a, 1.3 s) ran 1.3/1.1 - 1 = 2/11 slower than the best (b, 1.1 s).
        _rows("tiny", 4, ["a", "b", "c", "d", "e"], [1.0, 2.0, 3.0, 4.0, 5.0],
              [1.3, 1.1, 1.6, 2.0, 1.8])
        # Four grids in exactly the opposite order: rho = -1; the predicted best (w) measured
        # 4.0 s against the best 1.0 s (z): 3.0 slower.
        + _rows("tiny", 8, ["w", "x", "y", "z"], [0.1, 0.2, 0.3, 0.4], [4.0, 3.0, 2.0, 1.0])
        # Six grids in the same order (on a different scale): rho = 1, the planner picks the
        # fastest, gap 0.
        + _rows("small", 4, ["p", "q", "r", "s", "t", "u"], [6.0, 2.0, 5.0, 1.0, 4.0, 3.0],
                [60.0, 25.0, 51.0, 10.0, 47.0, 33.0])
    )
    # Rows of different groups interleaved, as a sweep that went back and forth would leave them.
    order = [0, 5, 9, 1, 6, 10, 2, 7, 11, 3, 8, 12, 4, 13, 14]
    assert sorted(order) == list(range(len(rows)))
    table = pd.DataFrame([rows[i] for i in order])
    found = _by_group(rank_agreement(table))
    assert set(found) == {("tiny", 4), ("tiny", 8), ("small", 4)}

    a = found[("tiny", 4)]
    assert a["grids"] == 5
    assert a["spearman"] == pytest.approx(0.8)
    assert (a["predicted_best"], a["measured_best"]) == ("a", "b")
    assert a["predicted_best_gap"] == pytest.approx(2 / 11)

    b = found[("tiny", 8)]
    assert b["grids"] == 4
    assert b["spearman"] == pytest.approx(-1.0)
    assert (b["predicted_best"], b["measured_best"]) == ("w", "z")
    assert b["predicted_best_gap"] == pytest.approx(3.0)

    c = found[("small", 4)]
    assert c["grids"] == 6
    assert c["spearman"] == pytest.approx(1.0)
    assert (c["predicted_best"], c["measured_best"]) == ("s", "s")
    assert c["predicted_best_gap"] == pytest.approx(0.0, abs=1e-12)


def test_spearman_with_a_tie_uses_average_ranks():
    # Measured 2.0, 1.0, 2.0, 3.0: average ranks 2.5, 1, 2.5, 4 against predicted ranks 1..4.
    # Pearson of the ranks: deviations (-1.5, -0.5, 0.5, 1.5) and (0, -1.5, 0, 1.5), covariance
    # sum 3, squared sums 5 and 4.5: rho = 3 / sqrt(22.5) = sqrt(0.4).
    table = pd.DataFrame(_rows("tiny", 4, ["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0],
                               [2.0, 1.0, 2.0, 3.0]))
    (row,) = rank_agreement(table).to_dict("records")
    assert row["spearman"] == pytest.approx(math.sqrt(0.4))
    assert (row["predicted_best"], row["measured_best"]) == ("a", "b")
    assert row["predicted_best_gap"] == pytest.approx(1.0)  # 2.0 s against 1.0 s


def test_spearman_matches_the_rank_difference_formula_on_random_tables():
    rng = np.random.default_rng(7)
    rows = []
    expected = {}
    for ranks, n in ((2, 4), (4, 5), (8, 6), (16, 5)):
        predicted, measured = rng.permutation(n) + 1.0, rng.uniform(1.0, 2.0, n)  # no ties
        grids = [f"g{i}" for i in range(n)]
        rows += _rows("m", ranks, grids, predicted * 0.01, measured)
        d = (np.argsort(np.argsort(predicted)) - np.argsort(np.argsort(measured))).astype(float)
        best = int(np.argmin(predicted))
        expected[("m", ranks)] = (1 - 6 * (d ** 2).sum() / (n * (n * n - 1)),
                                  grids[best], grids[int(np.argmin(measured))],
                                  measured[best] / measured.min() - 1)
    found = _by_group(rank_agreement(pd.DataFrame(rows)))
    assert set(found) == set(expected)
    for key, (rho, predicted_best, measured_best, gap) in expected.items():
        r = found[key]
        assert r["spearman"] == pytest.approx(rho)
        assert (r["predicted_best"], r["measured_best"]) == (predicted_best, measured_best)
        assert r["predicted_best_gap"] == pytest.approx(gap)


def test_fewer_than_three_grids_have_no_spearman_but_a_gap():
    # NaN with fewer than three grids (notebooks/scaling_sweep.ipynb): two points are always
    # perfectly (anti-)correlated and one has no order. The pick and its gap still count.
    table = pd.DataFrame(
        _rows("tiny", 2, ["a", "b"], [1.0, 2.0], [3.0, 2.0])  # picks a (3.0 s), best b (2.0 s)
        + _rows("tiny", 1, ["only"], [0.5], [0.7])
        + _rows("tiny", 4, ["a", "b", "c"], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]))
    found = _by_group(rank_agreement(table))
    two, one, three = found[("tiny", 2)], found[("tiny", 1)], found[("tiny", 4)]
    assert (two["grids"], one["grids"], three["grids"]) == (2, 1, 3)
    assert math.isnan(two["spearman"]) and math.isnan(one["spearman"])
    assert (two["predicted_best"], two["measured_best"]) == ("a", "b")
    assert two["predicted_best_gap"] == pytest.approx(0.5)
    assert (one["predicted_best"], one["measured_best"]) == ("only", "only")
    assert one["predicted_best_gap"] == 0.0
    # Three grids is enough: ranks (1, 2, 3) against (1, 3, 2), sum d^2 = 2, rho = 1 - 12/24.
    assert three["spearman"] == pytest.approx(0.5)
    assert three["predicted_best_gap"] == 0.0

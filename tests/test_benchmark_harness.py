"""The benchmarks' shared harness: the interleaved timing loop of speed_common (rotation,
warm-up rounds left out, losses recorded at the first and last step) and fsdp2_compare's grid
settings (Optimizations changes parsed by field type, bad input named), and the grids
perfmodel_validation is asked for (refused before anything is measured or written)."""

import argparse
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import collective_speed as cs  # noqa: E402
import fsdp2_compare as fc  # noqa: E402
import perfmodel_validation as pv  # noqa: E402
import speed_common as sc  # noqa: E402


def test_time_rounds_rotates_the_variants_and_skips_the_warm_up(monkeypatch):
    monkeypatch.setattr(sc, "sustained_peak", lambda: 1.0)  # the loop's own CPU measurements
    monkeypatch.setattr("axolab.metrics.measured_cpu_peak", lambda: 1.0)
    calls = []

    def variant(name):
        count = iter(range(100))

        def step():
            calls.append(name)
            return torch.tensor(float(next(count)))  # the "loss" counts the variant's steps
        return step

    names = ["a", "b", "c"]
    out = sc.time_rounds({n: variant(n) for n in names},
                         {"warmup": 1, "repeats": 3, "steps": 2})
    # Round r starts with variant r mod 3, each runs its 2 steps in a row.
    expected = [n for r in range(4) for n in (names[r % 3:] + names[:r % 3]) for _ in range(2)]
    assert calls == expected
    assert all(len(t) == 3 and all(x >= 0 for x in t) for t in out["times"].values())
    assert out["first_loss"] == {n: 0.0 for n in names}
    assert out["last_loss"] == {n: 7.0 for n in names}  # 4 rounds x 2 steps
    assert out["peak"] == out["sustained"] == [1.0] * 3


def test_fsdp2_grid_settings_parse_by_field_type():
    ap = argparse.ArgumentParser()
    assert fc._grid_setting("1,4,1,1", ap) == ((1, 4, 1, 1), {})
    assert fc._grid_setting("1x4x1x1", ap) == ((1, 4, 1, 1), {})  # as the tables print it
    dims, changes = fc._grid_setting("1,2,2,1:prefetch_late_in_backward=1/gather_bucket_mb=8",
                                     ap)
    assert dims == (1, 2, 2, 1)
    assert changes == {"prefetch_late_in_backward": True, "gather_bucket_mb": 8.0}
    assert fc._grid_setting("4,1,1,1:prefetch_weights=false", ap)[1] == \
        {"prefetch_weights": False}


@pytest.mark.parametrize("text,message", [
    ("1,4,1", "expected four positive integers"),
    ("2,2,2,1", "has 8 ranks, not 4"),
    ("1,x,1,1", "expected four positive integers"),
    ("1,4,1,1:no_such_switch=1", "'no_such_switch' is not a field of Optimizations"),
])
def test_fsdp2_bad_grid_settings_are_named(text, message, capsys):
    with pytest.raises(SystemExit):
        fc._grid_setting(text, argparse.ArgumentParser(prog="fsdp2_compare"))
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("grids,message", [
    ("1x1x2x3", "grid 1x1x2x3: 6 ranks is not among --ranks 4,8"),
    ("1x1x8x1", "grid 1x1x8x1: 4 key/value heads do not divide by y=8"),
    ("8x1x1x1", "global batch 4 does not divide by data*z = 8"),
    ("1x1x2x2,1x2", "grid '1x2': expected four positive integers"),
    ("1x1x2x2 --steps-per-round 0", "--steps-per-round must be at least 1, not 0"),
    ("1x1x2x2 --steps 0", "--steps must be at least 1, not 0"),
])
def test_validation_refuses_grids_it_cannot_measure(grids, message, tmp_path, capsys):
    out = tmp_path / "out"
    grids, *more = grids.split()
    with pytest.raises(SystemExit) as e:
        pv.main(["--ranks", "4,8", "--global-batch", "4", "--grids", grids, "--out", str(out),
                 *more])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_validation_takes_the_slowest_rank_per_step_and_the_median_per_round():
    def rank(times):
        return {"calibration": [{}, {}], "grids": {"1x2x1x1": {
            "times": times, "peak_bytes": 1.0, "state_bytes": 1.0, "counts": {}, "sizes": {}}}}
    # Two rounds of three steps on two ranks; a stalled step (9.0) is one rank's, in round 0.
    rows, rounds = pv.combine([rank([[1.0, 9.0, 1.2], [2.0, 2.2, 2.1]]),
                               rank([[1.1, 1.0, 1.0], [2.5, 2.0, 1.9]])])
    assert rows[0]["grid"] == [1, 2, 1, 1]
    assert rows[0]["step_times_each"] == [[1.1, 9.0, 1.2], [2.5, 2.2, 2.1]]
    assert rows[0]["step_times"] == [1.2, 2.2]
    assert len(rounds) == 2


def test_a_grids_time_is_the_median_of_all_its_steps():
    # Round medians 1, 9, 9 would say 9; five of the nine steps took 1.
    steps = [[1.0, 1.0, 1.0], [1.0, 9.0, 9.0], [1.0, 9.0, 9.0]]
    assert pv.grid_time(steps) == 1.0
    assert pv.grid_time([[3.0, 1.0], [2.0, 4.0]]) == 2.5
    assert pv.row_steps({"step_times_each": steps, "step_times": [1.0, 9.0, 9.0]}) == steps
    # A file from before steps were kept: each round's median is that round's only step.
    assert pv.row_steps({"step_times": [1.0, 9.0]}) == [[1.0], [9.0]]


def test_the_measurement_agreement_with_itself_by_hand():
    # Four grids, three rounds of one step; grids 2 and 3 swap places in round 1.
    times = [[[1], [1], [1]], [[2], [3], [2]], [[3], [2], [3]], [[4], [4], [4]]]
    # Round 0 (ranks 1,2,3,4) against the median of rounds 1-2 (1, 2.5, 2.5, 4: a tie, average
    # ranks): Pearson of the ranks = 4.5 / sqrt(5 * 4.5) = sqrt(0.9); round 1 (1,3,2,4) against
    # rounds 0 and 2 (1,2,3,4): 1 - 6 * 2 / (4 * 15) = 0.8; round 2 like round 0.
    assert pv.round_agreement(times) == pytest.approx([0.9 ** 0.5, 0.8, 0.9 ** 0.5])
    assert pv.round_agreement([[[1.0]], [[2.0]], [[3.0]]]) == []  # one round: nothing to compare
    # Rounds of several steps: grid 1's round 1 is slow in its median (3) but its steps pooled
    # with round 0's or 2's are not, so against the others it stays first.
    steps = [[[1, 1, 1], [1, 3, 3], [1, 1, 1]], [[2, 2, 2], [2, 2, 2], [2, 2, 2]],
             [[4, 4, 4], [4, 4, 4], [4, 4, 4]]]
    assert pv.round_agreement(steps) == pytest.approx([1.0, 0.5, 1.0])
    # Whatever rounds are drawn, a prediction in the measured order correlates perfectly and
    # the reverse order perfectly negatively; a swapped pair lands between.
    assert pv.bootstrap_spearman([1, 2, 3, 4], times) == pytest.approx((0.8, 1.0))
    assert pv.bootstrap_spearman([4, 3, 2, 1], [[[1], [1]], [[2], [2]], [[3], [3]],
                                                [[4], [4]]]) == pytest.approx((-1.0, -1.0))
    # Pooled, grid 1 falls behind grid 2 only in a draw of round 1 three times (1 in 27, under
    # the 5th percentile). Medians of round medians would put it behind whenever round 1 is
    # drawn twice or more (7 in 27), and the 5th percentile would be 0.5.
    assert pv.bootstrap_spearman([1, 2, 3], steps) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("argv, message", [(["--ranks", "1"], "--ranks 1 \\(>= 2\\)"),
                                           (["--rounds", "0"], "--rounds 0")])
def test_collective_speed_refuses_bad_settings_before_starting_ranks(argv, message, tmp_path,
                                                                     capsys):
    with pytest.raises(SystemExit) as e:
        cs.main([*argv, "--out", str(tmp_path / "out.json")])
    assert e.value.code == 2 and not (tmp_path / "out.json").exists()
    assert re.search(message, capsys.readouterr().err)

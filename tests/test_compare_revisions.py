"""benchmarks/compare_revisions.py: bad input is refused before any checkout, and a revision
compared with itself trains to the same loss from its own worktree, which is removed after."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_revisions as cr  # noqa: E402


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def test_grids_are_parsed_and_bad_ones_named():
    assert cr.parse_grids("1,1,1,1;2,1,2,1") == [(1, 1, 1, 1), (2, 1, 2, 1)]
    for bad in ("1,1,1", "1,1,1,0", "1,a,1,1"):
        with pytest.raises(ValueError, match="expected four positive integers"):
            cr.parse_grids(bad)
    with pytest.raises(ValueError, match="expected d,z,y,x entries separated by ';'"):
        cr.parse_grids("1,1,1,1;")


@pytest.mark.parametrize("argv", (["HEAD", "--grids", "1,2,1"],
                                  ["no-such-revision-here"],
                                  ["HEAD", "--head", "no-such-revision-here"],
                                  ["HEAD", "--rounds", "0"]))
def test_bad_input_is_refused_before_any_checkout(argv, capsys):
    before = _worktrees()
    with pytest.raises(SystemExit) as e:
        cr.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert _worktrees() == before


def test_a_revision_against_itself(tmp_path, capsys):
    before = _worktrees()
    out = tmp_path / "cmp.json"
    assert cr.main(["HEAD", "--head", "HEAD", "--grids", "1,1,1,1", "--rounds", "1",
                    "--steps", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["grid"] == [1, 1, 1, 1] and row["loss_equal"] is True
    assert row["base_s"] > 0 and row["ratio"] == pytest.approx(row["head_s"] / row["base_s"])
    assert len(data["times"]["base (1, 1, 1, 1)"]) == 1
    assert "head/base" in capsys.readouterr().out
    assert _worktrees() == before

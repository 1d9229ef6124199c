"""papermill runs and local sweeps: parameters checked and typed before anything runs, a
failing cell recorded with everything already written kept, hostile values kept verbatim."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from axolab.cli import main as axolab
from axolab.runs import ParameterError, RunFailed, check_parameters, prepare_sweep, run_notebook
from axolab.runs.notebook_file import write_notebook
from axolab.runs.params import expand_grid, parse_grid_option

sys.path.insert(0, str(Path(__file__).parent))
from notebook_factory import ECHO_PARAMETERS, echo_notebook  # noqa: E402


@pytest.fixture
def nb(tmp_path):
    return echo_notebook(tmp_path / "echo.ipynb")


def test_values_take_the_type_of_the_notebook_default(nb):
    typed = check_parameters(nb, {"name": "007", "count": "3", "ratio": "1e-3", "flag": "true",
                                  "items": "[3, 4]", "anything": "plain words"})
    assert typed == {"name": "007", "count": 3, "ratio": 1e-3, "flag": True, "items": [3, 4],
                     "anything": "plain words"}
    assert type(typed["ratio"]) is float and type(typed["count"]) is int
    # Python callers pass values; ints widen to float, nothing else changes type.
    assert check_parameters(nb, {"ratio": 2, "anything": {"a": 1}}) == {"ratio": 2.0,
                                                                        "anything": {"a": 1}}
    for bad, message in (({"count": "3.5"}, "'3.5' is not an int"),
                         ({"flag": "maybe"}, "not a bool"),
                         ({"items": "7"}, "is a int, the notebook's default is a list"),
                         ({"count": True}, "is a bool"),
                         ({"cuont": 1}, "did you mean 'count'")):
        with pytest.raises(ParameterError, match=message):
            check_parameters(nb, bad)


def test_unknown_parameter_and_missing_parameters_cell_refused_before_running(tmp_path, nb,
                                                                              capsys):
    results = tmp_path / "results"
    assert axolab(["run", str(nb), "-p", "nmae", "x", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "echo.ipynb has no parameter 'nmae'; did you mean 'name'?" in err
    untagged = write_notebook(tmp_path / "untagged.ipynb", [(None, ECHO_PARAMETERS)])
    assert axolab(["run", str(untagged), "--results", str(results)]) == 2
    assert "has no cell tagged 'parameters'" in capsys.readouterr().err
    assert not results.exists()


def test_run_records_typed_parameters_and_status(tmp_path, nb, capsys):
    results = tmp_path / "results"
    assert axolab(["run", str(nb), "-p", "count", "5", "-p", "items", "[9]", "--results",
                   str(results), "--name", "r1", "--quiet"]) == 0
    run_dir = results / "r1"
    seen = json.loads((run_dir / "seen.json").read_text())
    assert seen["count"] == ["int", 5] and seen["items"] == ["list", [9]]
    assert json.loads((run_dir / "parameters.json").read_text())["run_dir"] == str(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["attempts"] == 1
    assert (run_dir / "echo.ipynb").is_file()
    # The same directory with other values is refused; with the same values it reruns.
    with pytest.raises(ParameterError, match="count: 5 there, 6 now"):
        run_notebook(nb, {"count": 6, "items": [9]}, results, "r1")
    run_notebook(nb, {"count": 5, "items": [9]}, results, "r1", progress=False)
    assert json.loads((run_dir / "status.json").read_text())["attempts"] == 2


def test_failing_cell_marks_the_run_failed_and_keeps_its_output(tmp_path, nb, capsys):
    results = tmp_path / "results"
    assert axolab(["run", str(nb), "-p", "fail", "true", "-p", "count", "4", "--results",
                   str(results), "--name", "bad", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "failed in cell 3" in err and "RuntimeError: asked to fail (count=4)" in err
    assert "if fail:" in err  # the failing cell's source is shown
    run_dir = results / "bad"
    assert (run_dir / "seen.json").is_file()  # written by the cell before the failure
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"]["ename"] == "RuntimeError"
    executed = json.loads((run_dir / "echo.ipynb").read_text())
    assert any(o.get("ename") == "RuntimeError" for c in executed["cells"]
               for o in c.get("outputs", []))
    with pytest.raises(RunFailed, match="asked to fail"):  # the Python API raises
        run_notebook(nb, {"fail": True}, results, "bad2", progress=False)


def test_hostile_values_reach_the_notebook_verbatim(tmp_path, nb, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = "x; rm -rf ~ $(touch PWNED) `touch PWNED2` '\"\\\n"
    run_notebook(nb, {"name": value, "anything": value}, tmp_path / "results", "h",
                 progress=False)
    seen = json.loads((tmp_path / "results" / "h" / "seen.json").read_text())
    assert seen["name"] == ["str", value] and seen["anything"] == ["str", value]
    assert not list(tmp_path.rglob("PWNED*"))


def test_grid_parsing_and_expansion():
    assert parse_grid_option("lr=1e-3,3e-3") == ("lr", ["1e-3", "3e-3"])
    assert parse_grid_option('name=["a,b", "c"]') == ("name", ["a,b", "c"])
    for bad in ("lr", "=1,2", "lr="):
        with pytest.raises(ParameterError):
            parse_grid_option(bad)
    points = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}, {"c": 0})
    assert len(points) == 6 and points[0] == {"c": 0, "a": 1, "b": "x"}
    assert points[-1] == {"c": 0, "a": 2, "b": "z"}
    with pytest.raises(ParameterError, match="both as a fixed value and as a grid axis"):
        expand_grid({"a": [1]}, {"a": 2})


def test_local_sweep_runs_every_point_despite_a_failure(tmp_path, nb, capsys):
    results = tmp_path / "results"
    rc = axolab(["sweep", str(nb), "--grid", "count=1,2", "--grid", "fail=false,true",
                 "-p", "name", "s", "--results", str(results), "--name", "sw", "--quiet"])
    assert rc == 1  # one point per count failed on purpose
    spec = json.loads((results / "sw" / "sweep.json").read_text())
    assert [p["parameters"]["count"] for p in spec["points"]] == [1, 1, 2, 2]
    states = {}
    for p in spec["points"]:
        status = json.loads((Path(p["run_dir"]) / "status.json").read_text())
        states[(p["parameters"]["count"], p["parameters"]["fail"])] = status["state"]
        seen = json.loads((Path(p["run_dir"]) / "seen.json").read_text())
        assert seen["count"] == ["int", p["parameters"]["count"]] and seen["name"] == ["str", "s"]
    assert states == {(1, False): "completed", (1, True): "failed", (2, False): "completed",
                      (2, True): "failed"}
    assert "2 of 4 runs completed" in capsys.readouterr().out
    # The same name with another grid is refused before anything runs.
    with pytest.raises(ParameterError, match="holds another sweep"):
        prepare_sweep(nb, {"count": [7]}, {}, results, "sw")


def test_shipped_notebooks_match_their_sources():
    import nbformat

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    from make_notebooks import NOTEBOOKS

    assert sorted(NOTEBOOKS) == sorted(p.name for p in (root / "notebooks").glob("*.ipynb"))
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.read(str(root / "notebooks" / name), as_version=4)
        assert [(c.cell_type, c.source) for c in nb.cells] == [
            ("markdown" if kind == "markdown" else "code", source) for kind, source in cells], \
            f"notebooks/{name} is stale: run python tools/make_notebooks.py"
        # A protocol notebook opens with its title, then the cell papermill overrides.
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert tagged == [1], f"notebooks/{name}: parameters cell at {tagged}, expected [1]"


def test_a_kernel_that_dies_while_starting_is_started_again(tmp_path, monkeypatch):
    """Kernels started together on one node can take each other's ports and die before their
    first reply; the run starts the kernel again instead of failing the task."""
    import papermill

    import importlib

    from axolab.runs import prepare_run

    execute_module = importlib.import_module("axolab.runs.execute")

    real, calls = papermill.execute_notebook, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return real(*args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    monkeypatch.setattr(execute_module.random, "uniform", lambda a, b: 0.0)
    run = prepare_run(echo_notebook(tmp_path / "echo.ipynb"), {}, tmp_path / "results")
    assert execute_module.execute(run, progress=False)["state"] == "completed"
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda *a, **k: (_ for _ in ()).throw(
                            RuntimeError("Kernel died before replying to kernel_info")))
    with pytest.raises(RuntimeError, match="Kernel died"):
        execute_module.execute(run, progress=False)
    status = json.loads((run.run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"]["ename"] == "RuntimeError"

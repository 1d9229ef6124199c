"""The `axolab plan` command line: JSON rows, the table and its FLOP convention, a model that
fits nowhere, bad input as a message, the late-prefetch switch and the calibrate subcommand."""

import argparse
import json

import pytest

from axolab.perfmodel import Workload
from axolab.perfmodel.calibrate import CalibrationConfig
from axolab.perfmodel.cli import add_plan_parser


def _plan(argv):
    parser = argparse.ArgumentParser(prog="axolab")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def test_cli_ranks_grids_as_json(capsys):
    code = _plan(["--model", "llama-3.1-405b", "--gpus", "1024", "--machine", "frontier",
                  "--seq-len", "4096", "--top", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["fits"] and len(out["rows"]) == 3
    first = out["rows"][0]
    assert first["data"] * first["z"] * first["y"] * first["x"] == 1024
    assert first["memory_gib"]["total"] <= 64 and first["fits"]


def test_cli_plans_a_late_backward_prefetch(capsys):
    argv = ["--model", "llama-3.1-8b", "--gpus", "8", "--machine", "frontier", "--json",
            "--top", "50"]
    rows = []
    for extra in ([], ["--late-backward-prefetch"]):
        assert _plan(argv + extra) == 0
        rows.append({(r["data"], r["z"], r["y"], r["x"]): r
                     for r in json.loads(capsys.readouterr().out)["rows"]})
    depth = [g for g in rows[0] if g[1] > 1 and g in rows[1]]
    assert depth  # Z-sharded grids hold one gathered layer less in backward
    assert all(rows[1][g]["memory_gib"]["weight_buffers"]
               < rows[0][g]["memory_gib"]["weight_buffers"]
               for g in depth)


def test_cli_table_and_hopeless_case(capsys):
    assert _plan(["--model", "tiny-llama", "--gpus", "4", "--machine", "alps",
                  "--global-batch", "8", "--seq-len", "512"]) == 0
    table = capsys.readouterr().out
    assert "tiny-llama on 4 GPUs of alps" in table and "D x Z x Y x X" in table
    # The table says which FLOPs its MFU counts: the model's, as the training loop's metric.
    from axolab.perfmodel.compute import model_flops_per_step
    from axolab.perfmodel.shapes import model_shapes

    flops = model_flops_per_step(model_shapes("tiny-llama"),
                                 Workload(global_batch=8, seq_len=512))
    assert f"MFU counts model FLOPs, {flops:.4g} FLOP per step" in table
    assert "also times the recomputed forward" in table
    code = _plan(["--model", "llama-3.1-405b", "--gpus", "8", "--machine", "frontier"])
    out = capsys.readouterr().out
    assert code == 2
    assert "llama-3.1-405b does not fit on 8 GPUs of frontier: the best grid" in out
    assert "GiB usable of 64 GiB; needs at least" in out and "Traceback" not in out


def test_cli_bad_input_is_a_message(capsys):
    assert _plan(["--model", "llama-3.1-8b", "--gpus", "8", "--machine", "summit"]) == 2
    assert "unknown machine 'summit'" in capsys.readouterr().err
    assert _plan(["--gpus", "8"]) == 2
    assert "--model and --gpus are required" in capsys.readouterr().err


def test_cli_calibrate_subcommand_parses():
    parser = argparse.ArgumentParser(prog="axolab")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", "calibrate", "--out", "m.json", "--ranks", "2"])
    assert (args.plan_command, args.out, args.ranks) == ("calibrate", "m.json", 2)
    with pytest.raises(ValueError, match="ranks, repeats and rounds >= 1"):
        CalibrationConfig(ranks=0)

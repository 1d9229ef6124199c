"""The `axolab` command."""

from __future__ import annotations

import argparse
import sys

from .grid_shape import GridShape


def _data_build(args) -> int:
    from axolab.data import build

    out = build(args.recipe, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(out)
    return 0


def _train(args) -> int:
    from axolab.launch import run

    last = run(args.config, args.nprocs, launcher=args.launcher, timeout_s=args.timeout,
               progress=not args.quiet)
    if last:
        print(f"step {last['step']}: loss {last['loss']:.4f}")
    return 0


def _eval(args) -> int:
    import json

    from axolab.launch import evaluate

    config = {}
    if args.config:
        try:
            config = json.loads(open(args.config).read())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {args.config}: cannot read an EvalConfig JSON ({e})")
    for name in ("prefix_len", "suffix_len", "batch_size"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if args.no_exposure:
        config["exposure"] = False
    if args.validation_loss:
        config["validation_loss"] = True
    if args.reference:
        config["reference"] = args.reference
    checkpoints = args.checkpoints
    if checkpoints not in ("latest", "all"):
        try:
            checkpoints = [int(s) for s in checkpoints.split(",")]
        except ValueError:
            raise ValueError(f"--checkpoints {args.checkpoints!r}: expected latest, all or "
                             "step numbers separated by commas") from None
    summary = evaluate(args.target, args.data, config, grid=_grid_shape(args.grid),
                       checkpoints=checkpoints, out_dir=args.out, launcher=args.launcher,
                       timeout_s=args.timeout, progress=not args.quiet)
    print(f"exact match by repetitions: {summary['exact_match_by_repetitions']}")
    if summary["mia"]:
        print("membership AUC: " + ", ".join(f"{name} {r['auc']:.3f}"
                                             for name, r in summary["mia"].items()))
    return 0


def _grid_shape(text: str) -> list[int]:
    try:
        return list(GridShape.parse(text).dims)
    except ValueError as e:
        raise ValueError(f"--{e}") from None


def _params(pairs) -> dict:
    return {key: value for key, value in (pairs or [])}


def _grid(specs) -> dict:
    from axolab.runs.params import ParameterError, parse_grid_option

    grid = {}
    for spec in specs or []:
        key, values = parse_grid_option(spec)
        if key in grid:
            raise ParameterError(f"--grid {key} given twice")
        grid[key] = values
    return grid


def _run(args) -> int:
    from axolab.runs import run_notebook

    status = run_notebook(args.notebook, _params(args.param), args.results, args.name,
                          progress=not args.quiet, log_output=args.log_output)
    print(f"{status['state']}: {status['output']}")
    return 0


def _sweep(args) -> int:
    from axolab.runs import prepare_sweep, run_sweep

    sweep = prepare_sweep(args.notebook, _grid(args.grid), _params(args.param), args.results,
                          args.name)
    statuses = run_sweep(sweep, progress=not args.quiet, log_output=args.log_output)
    failed = [s for s in statuses if s["state"] != "completed"]
    print(f"{len(statuses) - len(failed)} of {len(statuses)} runs completed in {sweep.sweep_dir}")
    return 1 if failed else 0


def _slurm_submit(args) -> int:
    from pathlib import Path

    from axolab.runs import prepare_sweep
    from axolab.runs.sweep import sweep_directory
    from axolab.slurm import load_options, submit
    from axolab.slurm.script import check_script_paths

    opts = load_options(args.site_config, nodes=args.nodes, ntasks_per_node=args.ntasks_per_node,
                        gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                        mem=args.mem, time=args.time, partition=args.partition,
                        account=args.account, qos=args.qos, max_concurrent=args.max_concurrent)
    # Everything the job script will hold is checked before the sweep directory is written.
    check_script_paths(sweep_directory(args.notebook, args.results, args.name),
                       Path.cwd().resolve())
    sweep = prepare_sweep(args.notebook, _grid(args.grid), _params(args.param), args.results,
                          args.name)
    job = submit(sweep, opts)
    print(f"submitted job {job}: {len(sweep.points)} array task(s), results in {sweep.sweep_dir}")
    return 0


def _slurm_status(args) -> int:
    from axolab.slurm import submitted_sweeps, sweep_status

    sweeps = [args.sweep] if args.sweep else submitted_sweeps(args.results)
    if not sweeps:
        print(f"no submitted sweeps under {args.results}")
    for sweep in sweeps:
        print(sweep)
        for t in sweep_status(sweep):
            reason = f" ({t.reason})" if t.reason else ""
            print(f"  {t.index:3d} {t.state:11s}{reason} job {t.job_id or '-':>10s}  {t.run_dir}")
    return 0


def _report(args) -> int:
    from axolab.report import build_report

    out = build_report(args.dirs or ["results"], args.out)
    print(out / "index.html")
    return 0


def _add_notebook_args(p, grid: bool) -> None:
    p.add_argument("notebook", help="notebook with a cell tagged 'parameters'")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a parameter (typed like the notebook's default); repeatable")
    if grid:
        p.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                       help="a sweep axis; the runs are the product of all axes; repeatable")
    p.add_argument("--name", help="run (or sweep) directory name under --results")
    p.add_argument("--results", default="results", help="results root (default: results)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axolab", description="memorization studies at scale")
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets with injected canaries").add_subparsers(
        dest="data_command", required=True)
    b = data.add_parser("build", help="build a recipe's dataset (data_recipes/*.yaml)")
    b.add_argument("recipe", help="recipe YAML file")
    b.add_argument("--out", help="output directory (default results/data/<recipe name>)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset built by axolab (never any other directory)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_data_build)

    t = sub.add_parser("train", help="train from a config JSON on its grid's ranks")
    t.add_argument("config", help="TrainConfig JSON file")
    t.add_argument("--nprocs", type=int, help="ranks (default: the grid's product)")
    t.add_argument("--launcher", default="auto", choices=["auto", "local", "slurm"])
    t.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="score a run's canaries as a job on a grid of ranks",
                       description="Memorization of every canary of DATA (exact match, "
                       "matched prefix, membership scores, exposure), measured by a job on "
                       "--grid ranks; files as in docs/memorization-files.md.")
    e.add_argument("target", help="run directory, one checkpoint, or a HF model directory")
    e.add_argument("--data", required=True, help="the dataset whose canaries are scored")
    e.add_argument("--grid", default="1,1,1,1", help="data,z,y,x of the job (default 1,1,1,1)")
    e.add_argument("--checkpoints", default="latest",
                   help="latest, all (a curve over training) or steps, e.g. 100,200")
    e.add_argument("--config", help="EvalConfig JSON (axolab.config.EvalConfig fields)")
    e.add_argument("--prefix-len", type=int, help="prompt tokens")
    e.add_argument("--suffix-len", type=int, help="tokens to reproduce")
    e.add_argument("--batch-size", type=int, help="sequences per forward pass")
    e.add_argument("--no-exposure", action="store_true", help="skip ranking secret candidates")
    e.add_argument("--validation-loss", action="store_true",
                   help="also the loss over the whole validation split")
    e.add_argument("--reference", help="reference model (model or run directory) for the "
                   "calibrated membership score")
    e.add_argument("--out", help="results directory (default: the run directory)")
    e.add_argument("--launcher", default="auto", choices=["auto", "local", "slurm"])
    e.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    r = sub.add_parser("run", help="execute a notebook with papermill into results/<run>/")
    _add_notebook_args(r, grid=False)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--log-output", action="store_true", help="echo the notebook's output")
    r.set_defaults(func=_run)

    s = sub.add_parser("sweep", help="run a notebook over a parameter grid, here, in turn")
    _add_notebook_args(s, grid=True)
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--log-output", action="store_true", help="echo the notebooks' output")
    s.set_defaults(func=_sweep)

    slurm = sub.add_parser("slurm", help="sweeps as Slurm job arrays").add_subparsers(
        dest="slurm_command", required=True)
    ss = slurm.add_parser("submit", help="submit a notebook (or a sweep) as a job array")
    _add_notebook_args(ss, grid=True)
    ss.add_argument("--site-config", help="YAML of site defaults (see axolab.slurm.options)")
    for opt, kind in (("nodes", int), ("ntasks-per-node", int), ("gpus-per-node", int),
                      ("cpus-per-task", int), ("mem", str), ("time", str), ("partition", str),
                      ("account", str), ("qos", str), ("max-concurrent", int)):
        ss.add_argument(f"--{opt}", type=kind)
    ss.set_defaults(func=_slurm_submit)
    st = slurm.add_parser("status", help="state of a submitted sweep's array tasks")
    st.add_argument("sweep", nargs="?", help="sweep directory (default: all under --results)")
    st.add_argument("--results", default="results")
    st.set_defaults(func=_slurm_status)

    from axolab.perfmodel.cli import add_plan_parser

    add_plan_parser(sub)

    rp = sub.add_parser("report", help="tables, plots and an HTML page over all runs found")
    rp.add_argument("dirs", nargs="*", metavar="RESULTS_DIR",
                    help="directories searched for runs, recursively (default: results)")
    rp.add_argument("--out", default="results/report",
                    help="report directory, replaced whole (default: results/report)")
    rp.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    from axolab.data import RecipeError
    from axolab.launch import JobPreempted, LaunchError
    from axolab.launch.preemption import PREEMPTED_EXIT
    from axolab.report import ReportError
    from axolab.runlock import RunDirLocked
    from axolab.runs import ParameterError, RunFailed
    from axolab.slurm import SlurmError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (RecipeError, ParameterError, SlurmError, ReportError, ValueError,
            FileNotFoundError, RunDirLocked) as e:
        print(f"axolab {args.command}: {e}", file=sys.stderr)
        return 2
    except JobPreempted as e:  # state saved: a scheduler may requeue on this exit status
        print(f"axolab {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except (RunFailed, LaunchError) as e:
        print(f"axolab {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

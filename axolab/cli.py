"""The `axolab` command."""

from __future__ import annotations

import argparse
import sys


def _data_build(args) -> int:
    from axolab.data import RecipeError, build

    try:
        out = build(args.recipe, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except RecipeError as e:
        print(f"axolab data build: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axolab", description="memorization studies at scale")
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets with injected canaries").add_subparsers(
        dest="data_command", required=True)
    b = data.add_parser("build", help="build a recipe's dataset (data_recipes/*.yaml)")
    b.add_argument("recipe", help="recipe YAML file")
    b.add_argument("--out", help="output directory (default results/data/<recipe name>)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_data_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

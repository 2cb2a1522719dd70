"""``python -m retrieval.run``: ``demo`` runs every ``notebooks/NN_*.ipynb`` into ``runs/demo`` and prints the
summary table; ``sweep NOTEBOOK -p name v1 v2`` (alias ``grid``) runs one notebook over a parameter grid
(:mod:`retrieval.run.sweep`); ``summary RUN_DIR`` prints a run's table; ``record RUN_DIR --name NAME`` and
``report [--check]`` keep the committed records and the pages rendered from them (:mod:`.report`);
``store-checks`` refreshes the outputs nbval compares. (Successor of ``python -m retrieval.runs``.)"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import resolve
from .notebooks import run_notebooks, store_check_outputs
from .report import record_run, write_pages
from .store import load_metrics, summary_table
from .sweep import load_grid_file, parse_value, run_grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retrieval.run", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run every notebook in order and print the summary")
    demo.add_argument("--run-dir", default="runs/demo", help="the run folder (anywhere on disk)")
    demo.add_argument("--fig-dir", help="figures folder (default <run-dir>/figures; make demo: figures/)")
    demo.add_argument("--profile", default="full", choices=["full", "smoke"])
    demo.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 00 01")
    demo.add_argument("-p", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                      help="notebook parameter (value parsed as JSON when possible)")
    sub.add_parser("store-checks", help="run the notebooks in the smoke profile into runs/smoke and store "
                   "the outputs of nbval-check-output cells in the source notebooks")
    show = sub.add_parser("summary", help="print the summary table of a run folder")
    show.add_argument("run_dir")
    rec = sub.add_parser("record", help="copy a finished run's metrics.json and run.json into results/NAME/ "
                         "(the committed record the docs are rendered from)")
    rec.add_argument("run_dir")
    rec.add_argument("--name", required=True, help="the record's name, e.g. demo")
    rec.add_argument("--note", help="a line on the run's conditions (e.g. other jobs on the cores), shown with it")
    rep = sub.add_parser("report", help="render docs/results.md and the README's demo table from results/")
    rep.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    grid = sub.add_parser("sweep", aliases=["grid"], help="run one notebook over a parameter grid (papermill), one "
                          "folder per combination, and collect summary.csv/.md/.html/.png (retrieval/run/sweep.py)")
    grid.add_argument("notebook", nargs="?", help="e.g. notebooks/01_extract_features.ipynb (or give --config)")
    grid.add_argument("-p", nargs="+", action="append", metavar="NAME VALUE", default=[],
                      help="a grid axis: -p pooling gem mac (values parsed as JSON when possible)")
    grid.add_argument("--set", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                      help="a parameter fixed for every combination")
    grid.add_argument("--config", help="a YAML grid file (notebook, grid, parameters, out, profile, link)")
    grid.add_argument("--out", help="output folder (default runs/grid/<notebook stem>)")
    grid.add_argument("--profile", choices=["full", "smoke"], help="run profile (default full)")
    grid.add_argument("--link", action="append", default=[], help="a file or folder of an earlier run to link "
                      "into every combination's folder (e.g. runs/demo/train_global)")
    grid.add_argument("--timeout", type=int, help="seconds per cell before a combination fails")
    args = ap.parse_args(argv)
    if args.cmd in ("sweep", "grid"):
        return _sweep_command(ap, args)
    if args.cmd == "demo":
        params = {}
        for k, v in args.p:
            try:
                params[k] = json.loads(v)
            except ValueError:
                params[k] = v
        t = time.perf_counter()
        try:
            metrics = run_notebooks(args.run_dir, args.profile, params, args.only, fig_dir=args.fig_dir,
                                    command=["python -m retrieval.run", *(sys.argv[1:] if argv is None else argv)])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"\nAll notebooks ran in {time.perf_counter() - t:.0f} s; executed notebooks and "
              f"metrics.json in {resolve(args.run_dir)}\n")
        print(summary_table(metrics))
    elif args.cmd == "record":
        try:
            print(f"recorded {args.run_dir} as {record_run(args.run_dir, args.name, note=args.note)}")
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif args.cmd == "report":
        changed = write_pages(check=args.check)
        for path in changed:
            print(f"{'differs from its records' if args.check else 'rendered'}: {path}")
        if args.check and changed:
            return 1
    elif args.cmd == "store-checks":
        run_notebooks("runs/smoke", "smoke")
        for path in store_check_outputs("runs/smoke"):
            print(f"stored check outputs in {path}")
    else:
        print(summary_table(load_metrics(args.run_dir)))
    return 0


def _sweep_command(ap: argparse.ArgumentParser, args) -> int:
    spec = load_grid_file(args.config) if args.config else {}
    notebook = args.notebook or spec.get("notebook")
    if not notebook:
        ap.error("sweep: give a notebook or --config FILE")
    axes = {}
    for item in args.p:
        if len(item) < 2:
            ap.error(f"sweep: -p {' '.join(item)}: expected a name and at least one value")
        axes[item[0]] = [parse_value(v) for v in item[1:]]
    grid = spec.get("grid", {})
    if axes:
        grid = [dict(g, **axes) for g in grid] if isinstance(grid, list) else dict(grid, **axes)
    if not grid:
        ap.error("sweep: no grid axes (-p NAME V1 V2 ... or 'grid:' in --config)")
    fixed = dict(spec.get("parameters") or {}, **{k: parse_value(v) for k, v in args.set})
    try:
        result = run_grid(notebook, grid, out=args.out or spec.get("out"), parameters=fixed,
                          profile=args.profile or spec.get("profile", "full"),
                          link=args.link or spec.get("link", []), timeout=args.timeout or spec.get("timeout"))
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = result["out"]
    print(f"\n{len(result['done'])} run, {len(result['skipped'])} skipped (done before), "
          f"{len(result['failed'])} failed; summary in {out / 'summary.md'} (.csv, .html, .png)")
    for name, error in result["failed"].items():
        print(f"  FAILED {name}: {error}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

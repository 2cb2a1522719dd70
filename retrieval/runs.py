"""Run folders: ``metrics.json`` and running the notebooks in order with papermill.

``metrics.json`` (one per run folder; every notebook adds its entries)::

    {"<dataset>": {"<method>": {"easy": {"map": ..., "mp@1": ...}, "medium": {...}, "hard": {...}}}}

(``{"classic": {...}}`` instead of E/M/H for the original Oxford5k / Paris6k, see
:func:`retrieval.metrics.evaluate`.)

Command line: ``python -m retrieval.runs demo`` runs every ``notebooks/NN_*.ipynb`` into
``runs/demo`` and prints the summary table; ``python -m retrieval.runs grid NOTEBOOK -p name v1 v2``
runs one notebook over a parameter grid (:mod:`retrieval.grid`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .config import PROFILE_ENV, ROOT, resolve
from .io import atomic_write_json
from .layout import RunLayout
from .metrics import ALL_PROTOCOLS, CLASSIC, PROTOCOL_LABELS, PROTOCOLS, gnd_protocols


def load_metrics(run_dir: str | os.PathLike) -> dict:
    """``<run_dir>/metrics.json`` ({} when absent); ValueError naming the file when it is not JSON."""
    path = RunLayout(run_dir).metrics_file
    if not path.exists():
        return {}
    with open(path) as fh:
        try:
            return json.load(fh)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def record_metrics(run_dir: str | os.PathLike, dataset: str, method: str, results: dict,
                   recorded: dict | None = None) -> str:
    """Add (or replace) ``results[dataset][method]`` in ``<run_dir>/metrics.json``, atomically; returns
    the key it was stored under.

    ``results``: an evaluate() output, E/M/H (revisited sets) or ``classic`` (Oxford5k/Paris6k).
    ``recorded``: where the row comes from (``notebook``, ``image_size``, ``weights`` fingerprint),
    stored beside the protocols. A row is replaced by the notebook that wrote it, or by a new measurement
    of the same model (same image size and weights; the row keeps its notebook); another notebook's row
    for another model under the same name is kept, and the new row goes under ``"<method> [<notebook>]"``.
    """
    protocols = (CLASSIC,) if CLASSIC in results and not set(PROTOCOLS) & set(results) else PROTOCOLS
    missing = [p for p in protocols if p not in results]
    if missing:
        raise ValueError(f"results for {dataset}/{method} lack protocols {missing} (expected evaluate() output: "
                         f"{'/'.join(PROTOCOLS)} or {CLASSIC!r})")
    row = {p: {k: float(v) for k, v in results[p].items()} for p in protocols}
    if recorded:
        row["recorded"] = dict(recorded)
    metrics = load_metrics(run_dir)
    rows = metrics.setdefault(dataset, {})
    key, old = method, (rows.get(method) or {}).get("recorded")
    if recorded and old and old.get("notebook") != recorded.get("notebook"):
        if (old.get("image_size"), old.get("weights")) == (recorded.get("image_size"), recorded.get("weights")):
            row["recorded"]["notebook"] = old.get("notebook")  # the same model measured again: the row keeps its owner
        else:
            key = f"{method} [{recorded.get('notebook')}]"
    rows[key] = row
    atomic_write_json(RunLayout(run_dir).metrics_file, metrics)
    return key


def ranks_path(run_dir: str | os.PathLike, dataset: str, method: str) -> Path:
    """:meth:`RunLayout.ranks <retrieval.layout.RunLayout.ranks>` of ``run_dir``."""
    return RunLayout(run_dir).ranks(dataset, method)


def record_ranks(run_dir: str | os.PathLike, dataset: str, method: str, ranks, gnd, scores=None,
                 keep: int = 100, data_root: str | os.PathLike | None = None) -> Path:
    """Save a method's ranked lists for the result browser and the top-10 grids, atomically.

    ranks: (n_ranked, n_q) db indices (full or truncated lists); scores: (n_ranked | K, n_q)
    similarities in the same order (optional; re-rankers such as CSA score only their top K, the
    rows beyond are stored as NaN). The per-query AP of each protocol is computed here on the
    lists as given, so the browser shows the true AP even though only the top ``keep`` rows are
    stored (E/M/H, or ``classic`` for the original Oxford5k/Paris6k gnd). ``data_root``: where
    ``test/<dataset>`` lives (default the data folder at load time).
    """
    from .metrics import compute_map, protocol_gnd
    from .io import atomic_save_npz

    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"ranks for {dataset}/{method}: expected (n_ranked, n_q={len(gnd)}), got {ranks.shape}")
    keep = min(int(keep), ranks.shape[0])
    if keep < 1:
        raise ValueError(f"keep={keep}: at least one rank must be kept")
    top = np.full((keep, ranks.shape[1]), np.nan, np.float32)
    if scores is not None:
        scores = np.asarray(scores, np.float32)
        if scores.ndim != 2 or scores.shape[1] != ranks.shape[1]:
            raise ValueError(f"scores for {dataset}/{method}: expected (n, n_q={ranks.shape[1]}), got {scores.shape}")
        n = min(keep, scores.shape[0])
        top[:n] = scores[:n]
    aps = {f"ap_{p}": compute_map(ranks, protocol_gnd(gnd, p))[1].astype(np.float32) for p in gnd_protocols(gnd)}
    return atomic_save_npz(ranks_path(run_dir, dataset, method), ranks=ranks[:keep].astype(np.int64),
                           scores=top, n_ranked=np.array(ranks.shape[0]), dataset=np.array(dataset),
                           method=np.array(method), data_root=np.array(str(data_root or "")), **aps)


def load_ranks(run_dir: str | os.PathLike, dataset: str, method: str) -> dict:
    """What :func:`record_ranks` saved: ``ranks`` (k, n_q) int64, ``scores`` (k, n_q) float32
    (NaN where not scored), ``ap`` {protocol: (n_q,) float32, NaN for queries without positives;
    E/M/H or ``classic``},
    ``dataset``, ``method``, ``n_ranked`` and ``data_root`` (None when not recorded)."""
    path = ranks_path(run_dir, dataset, method)
    if not path.is_file():
        have = list_ranks(run_dir).get(dataset, [])
        raise FileNotFoundError(f"no ranked lists of {method!r} on {dataset!r}: {path} is missing "
                                f"(recorded for this dataset: {have or 'none'})")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {"ranks": z["ranks"], "scores": z["scores"], "dataset": str(z["dataset"]),
                   "method": str(z["method"]), "n_ranked": int(z["n_ranked"]),
                   "data_root": str(z["data_root"]) or None,
                   "ap": {p: z[f"ap_{p}"] for p in ALL_PROTOCOLS if f"ap_{p}" in z.files}}
        if not out["ap"]:
            raise KeyError("no ap_<protocol> arrays")
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a ranks file written by record_ranks ({e})") from e
    return out


def list_ranks(run_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{dataset: [method, ...]}`` of the ranked lists recorded in ``run_dir`` (sorted)."""
    root = RunLayout(run_dir).root / "ranks"
    out = {}
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        methods = []
        for f in sorted(folder.glob("*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    methods.append(str(z["method"]))
            except (KeyError, ValueError, OSError):
                continue  # not a ranks file: ignored
        if methods:
            out[folder.name] = sorted(methods)
    return out


def summary_table(metrics: dict) -> str:
    """One line per (dataset, method): mAP ×100 per protocol recorded, E/M/H and/or ``classic``
    (``-`` where a row lacks one)."""
    found = {p for methods in metrics.values() for res in methods.values() for p in res}
    cols = [p for p in ALL_PROTOCOLS if p in found] or list(PROTOCOLS)
    width = {p: max(6, len(PROTOCOL_LABELS[p])) for p in cols}
    lines = [f"{'dataset':<18} {'method':<34} " + " ".join(f"{PROTOCOL_LABELS[p]:>{width[p]}}" for p in cols)]
    for dataset, methods in metrics.items():
        for method, res in methods.items():
            vals = " ".join(f"{100 * res[p]['map']:{width[p]}.2f}" if p in res else f"{'-':>{width[p]}}"
                            for p in cols)
            lines.append(f"{dataset:<18} {method:<34} {vals}")
    return "\n".join(lines)


def notebooks(folder: str | os.PathLike = ROOT / "notebooks") -> list[Path]:
    """The walk-through notebooks, in order (``NN_name.ipynb``)."""
    found = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb in {folder}")
    return found


def route_parameters(parameters: dict, selected: list[Path]) -> dict[str, dict]:
    """``{notebook name: the parameters it declares}``: a parameter goes only to the notebooks whose
    parameters cell has it (so ``-p image_size 160`` reaches every notebook with a test image size
    and nothing else); ValueError for a parameter no selected notebook has."""
    import papermill as pm

    declared = {nb.name: set(pm.inspect_notebook(str(nb))) for nb in selected}
    unknown = sorted(k for k in parameters if not any(k in names for names in declared.values()))
    if unknown:
        known = sorted(set().union(*declared.values())) if declared else []
        raise ValueError(f"parameter(s) {unknown} are not parameters of any notebook run "
                         f"({', '.join(nb.name for nb in selected)}); known: {known}")
    return {name: {k: v for k, v in parameters.items() if k in names} for name, names in declared.items()}


def run_notebooks(run_dir: str | os.PathLike = "runs/demo", profile: str = "full",
                  parameters: dict | None = None, only: list[str] | None = None,
                  progress: bool = True, fig_dir: str | os.PathLike | None = None) -> dict:
    """Execute the notebooks in order with papermill into ``run_dir`` (anywhere on disk); returns
    metrics.json. Each notebook gets ``run_dir``, ``fig_dir`` (default ``<run_dir>/figures``) and those
    of ``parameters`` it declares (:func:`route_parameters`)."""
    import papermill as pm

    run_dir = resolve(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if not only or any(nb.name.startswith(o) for o in only)]
    if not selected:
        raise ValueError(f"--only {only}: matches no notebook of {[nb.name for nb in notebooks()]}")
    common = dict(run_dir=str(run_dir), fig_dir=str(resolve(fig_dir).absolute()) if fig_dir else None)
    routed = route_parameters(dict(parameters or {}), selected)
    before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile  # the kernels inherit it; their parameters cells read it
    try:
        for nb in selected:
            t = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {nb.name} ...", flush=True)
            pm.execute_notebook(str(nb), str(run_dir / nb.name), parameters=dict(common, **routed[nb.name]),
                                cwd=str(nb.parent), kernel_name="python3", progress_bar=progress)
            print(f"    done in {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        if before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = before
    return load_metrics(run_dir)


def store_check_outputs(run_dir: str | os.PathLike = "runs/smoke") -> list[Path]:
    """Copy the outputs of cells tagged ``nbval-check-output`` from the notebooks executed in
    ``run_dir`` into the source notebooks (their reference for nbval); other cells stay empty.

    Run after changing what a checked cell prints: ``python -m retrieval.runs store-checks``.
    """
    import nbformat

    changed = []
    for nb_path in notebooks():
        done = resolve(run_dir) / nb_path.name
        if not done.exists():
            raise FileNotFoundError(f"{done}: run the notebooks in the smoke profile first")
        src, ran = nbformat.read(nb_path, 4), nbformat.read(done, 4)
        by_id = {c.get("id"): c for c in ran.cells}
        for cell in src.cells:
            if cell.cell_type != "code":
                continue
            checked = "nbval-check-output" in cell.metadata.get("tags", [])
            cell.outputs = [o for o in by_id[cell.id].outputs if o.output_type == "stream"] if checked else []
            # nbval treats a cell with outputs but no execution count as never run
            cell.execution_count = by_id[cell.id].execution_count if checked else None
        nbformat.write(src, nb_path)
        changed.append(nb_path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retrieval.runs", description=__doc__.split("\n")[0])
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
    grid = sub.add_parser("grid", help="run one notebook over a parameter grid (papermill), one folder per "
                          "combination, and collect summary.csv/.md/.html/.png (see retrieval/grid.py)")
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
    if args.cmd == "grid":
        return _grid_command(ap, args)
    if args.cmd == "demo":
        params = {}
        for k, v in args.p:
            try:
                params[k] = json.loads(v)
            except ValueError:
                params[k] = v
        t = time.perf_counter()
        try:
            metrics = run_notebooks(args.run_dir, args.profile, params, args.only, fig_dir=args.fig_dir)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"\nAll notebooks ran in {time.perf_counter() - t:.0f} s; executed notebooks and "
              f"metrics.json in {resolve(args.run_dir)}\n")
        print(summary_table(metrics))
    elif args.cmd == "store-checks":
        run_notebooks("runs/smoke", "smoke")
        for path in store_check_outputs("runs/smoke"):
            print(f"stored check outputs in {path}")
    else:
        print(summary_table(load_metrics(args.run_dir)))
    return 0


def _grid_command(ap: argparse.ArgumentParser, args) -> int:
    from .grid import load_grid_file, parse_value, run_grid

    spec = load_grid_file(args.config) if args.config else {}
    notebook = args.notebook or spec.get("notebook")
    if not notebook:
        ap.error("grid: give a notebook or --config FILE")
    axes = {}
    for item in args.p:
        if len(item) < 2:
            ap.error(f"grid: -p {' '.join(item)}: expected a name and at least one value")
        axes[item[0]] = [parse_value(v) for v in item[1:]]
    grid = spec.get("grid", {})
    if axes:
        grid = [dict(g, **axes) for g in grid] if isinstance(grid, list) else dict(grid, **axes)
    if not grid:
        ap.error("grid: no grid axes (-p NAME V1 V2 ... or 'grid:' in --config)")
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

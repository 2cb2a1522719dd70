"""Batch runs of one notebook over parameter grids with papermill (``python -m retrieval.run sweep``).

Every combination of the grid runs into its own folder ``<out>/<name>=<value>,...``: the executed
notebook, its ``metrics.json`` and figures (``run_dir`` / ``fig_dir`` point there when the notebook
has them), ``params.json`` and ``status.json`` (``done`` / ``failed`` with the error, seconds). A
combination already ``done`` with the same parameters is skipped on a rerun; a failed one is
reported and the batch goes on (and retries it on the next run). At the end everything is
collected into ``<out>/summary.csv``, ``summary.md``, ``summary.html`` and ``summary.png``.

Grids: ``-p name v1 v2 ...`` (values parsed as JSON when possible) on the command line, or a YAML
file::

    notebook: notebooks/01_extract_features.ipynb
    out: runs/grid/pooling            # default runs/grid/<notebook stem>
    profile: smoke                    # full (default) or smoke
    link: [runs/demo/train_global]    # inputs from an earlier run, linked into every folder
    parameters: {dataset: synth}      # fixed for every combination
    grid:                             # a dict (its cartesian product) or a list of dicts (their union)
      pooling: [gem, mac]
      image_size: [96, 128]

Parameter values are checked against the notebook's parameters cell before anything runs
(:func:`retrieval.config.check_parameters`).
"""

from __future__ import annotations

import ast
import csv
import html
import io
import itertools
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from ..config import PROFILE_ENV, check_parameters, resolve
from ..io import atomic_write_bytes, atomic_write_json, fingerprint, read_json
from ..metrics import PROTOCOL_LABELS
from ..viz import save_figure

#: summary columns of each protocol's mAP (E/M/H; ``classic`` for the original Oxford5k/Paris6k)
PROTOCOL_SHORT = dict(PROTOCOL_LABELS)
_MAP_COLUMNS = tuple(PROTOCOL_SHORT.values())


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def expand(grid: dict | list[dict]) -> list[dict]:
    """The combinations of ``grid``: a dict of ``name: [values]`` (a scalar counts as one value) →
    its cartesian product in key order; a list of such dicts → the union, duplicates dropped."""
    grids = grid if isinstance(grid, list) else [grid]
    combos: list[dict] = []
    for g in grids:
        if not isinstance(g, dict) or not g:
            raise ValueError(f"a grid must be a non-empty mapping of parameter -> list of values, got {g!r}")
        names = list(g)
        values = [v if isinstance(v, list) else [v] for v in g.values()]
        for name, vals in zip(names, values):
            if not vals:
                raise ValueError(f"grid parameter {name!r} has no values")
        for combo in itertools.product(*values):
            c = dict(zip(names, combo))
            if c not in combos:
                combos.append(c)
    return combos


def combo_name(params: dict) -> str:
    """Folder name of a combination: ``name=value,...`` with unsafe characters replaced; long names
    are cut and end in a hash of the parameters, so names stay unique."""
    text = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items())
    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "default"
    if len(safe) > 100 or safe != text:
        digest = fingerprint(params)[:8]
        safe = f"{safe[:90]}-{digest}"
    return safe


def notebook_defaults(notebook: str | os.PathLike, profile: str = "full") -> dict:
    """The values the notebook's cell tagged ``parameters`` assigns, evaluated under ``profile``."""
    import nbformat  # lazy: notebook runner only

    nb = nbformat.read(str(notebook), 4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile
    try:
        ns: dict = {}
        exec(compile(cells[0].source, f"{notebook}:parameters", "exec"), ns)
    finally:
        if before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = before

    names = [t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)]
    return {n: ns[n] for n in names if n != "SMOKE"}  # SMOKE follows the profile


def load_grid_file(path: str | os.PathLike) -> dict:
    """A grid YAML file (see the module docstring), checked."""
    import yaml  # lazy: grid files only

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(spec, dict) or "notebook" not in spec or "grid" not in spec:
        raise ValueError(f"{path}: expected a mapping with 'notebook' and 'grid' (and optional 'out', "
                         "'profile', 'parameters', 'link')")
    extra = set(spec) - {"notebook", "grid", "out", "profile", "parameters", "link", "timeout"}
    if extra:
        raise ValueError(f"{path}: unknown keys {sorted(extra)}")
    return spec


def run_grid(notebook: str | os.PathLike, grid: dict | list[dict], out: str | os.PathLike | None = None,
             parameters: dict | None = None, profile: str = "full", link: list | tuple = (),
             timeout: int | None = None, kernel: str = "python3", log=print) -> dict:
    """Run ``notebook`` once per combination of ``grid`` (see the module docstring); returns
    ``{"rows": [...], "done": [...], "failed": {name: error}, "skipped": [...], "out": Path}``
    after writing the summary files."""
    import papermill as pm  # lazy: notebook runner only
    from papermill.exceptions import PapermillExecutionError  # lazy: notebook runner only

    notebook = resolve(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook not found: {notebook}")
    out = resolve(out) if out is not None else resolve("runs/grid") / notebook.stem
    fixed = dict(parameters or {})
    combos = expand(grid)
    defaults = notebook_defaults(notebook, profile)
    for combo in combos:  # every value checked before anything runs
        check_parameters({**fixed, **combo}, defaults, where=notebook.name)
    links = [resolve(p) for p in link]
    for p in links:
        if not p.exists():
            raise FileNotFoundError(f"--link {p}: does not exist")
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = [], [], {}
    for i, combo in enumerate(combos, 1):
        name = combo_name(combo)
        folder = out / name
        params = {**fixed, **combo}
        for key, sub in (("run_dir", None), ("fig_dir", "figures")):
            if key in defaults and key not in params:
                params[key] = str(folder / sub if sub else folder)
        status = read_json(folder / "status.json")
        if status and status.get("state") == "done" and status.get("params") == params:
            log(f"[{i}/{len(combos)}] {name}: done before, skipped")
            skipped.append(name)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for p in links:
            target = folder / p.name
            if not target.exists() and not target.is_symlink():
                target.symlink_to(p, target_is_directory=p.is_dir())
        atomic_write_json(folder / "params.json", params)
        log(f"[{i}/{len(combos)}] {name} ...")
        t0 = time.perf_counter()
        before = os.environ.get(PROFILE_ENV)
        os.environ[PROFILE_ENV] = profile
        try:
            pm.execute_notebook(str(notebook), str(folder / notebook.name), parameters=params,
                                cwd=str(notebook.parent), kernel_name=kernel, progress_bar=False,
                                execution_timeout=timeout)
            state, error = "done", None
        except PapermillExecutionError as e:
            state, error = "failed", f"{e.ename}: {e.evalue}"
        except Exception as e:  # kernel died, timeout, bad notebook: reported, the batch goes on
            state, error = "failed", f"{type(e).__name__}: {e}"
        finally:
            if before is None:
                os.environ.pop(PROFILE_ENV, None)
            else:
                os.environ[PROFILE_ENV] = before
        seconds = time.perf_counter() - t0
        atomic_write_json(folder / "status.json", {"state": state, "error": error, "seconds": round(seconds, 2),
                                                   "params": params, "notebook": str(notebook)})
        if state == "done":
            done.append(name)
            log(f"    done in {seconds:.1f} s")
        else:
            failed[name] = error
            log(f"    FAILED after {seconds:.1f} s: {error}")
    rows = collect(out, [combo_name(c) for c in combos], combos)
    write_summary(out, rows, notebook=notebook, profile=profile, failed=failed)
    return {"rows": rows, "done": done, "failed": failed, "skipped": skipped, "out": out}


def collect(out: Path, names: list[str], combos: list[dict]) -> list[dict]:
    """One row per (combination, dataset, method) of the combinations' ``metrics.json`` (one row
    with empty metrics for a combination without any): its parameters, status, seconds and the
    mAP and mP@k of each protocol recorded (E/M/H, or ``classic``), ×100."""
    rows = []
    for name, combo in zip(names, combos):
        folder = out / name
        status = read_json(folder / "status.json") or {"state": "not run"}
        base = {"combination": name, **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in combo.items()},
                "status": status.get("state"), "seconds": status.get("seconds")}
        metrics = read_json(folder / "metrics.json") or {}
        found = False
        for dataset, methods in metrics.items():
            for method, res in methods.items():
                row = dict(base, dataset=dataset, method=method)
                for p, short in PROTOCOL_SHORT.items():
                    for key, v in sorted(res.get(p, {}).items()):
                        row[short if key == "map" else f"{key}_{short}"] = round(100 * float(v), 2)
                rows.append(row)
                found = True
        if not found:
            rows.append(dict(base, dataset="", method=""))
    return rows


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    first = [c for c in cols if c not in _MAP_COLUMNS and not re.match(r"mp@", c)]
    return first + [c for c in _MAP_COLUMNS if c in cols] + sorted(c for c in cols if c.startswith("mp@"))


def write_summary(out: Path, rows: list[dict], notebook: Path, profile: str, failed: dict) -> dict[str, Path]:
    """``summary.csv`` (every column), ``summary.md`` and ``summary.html`` (parameters, status and
    mAP ×100 per protocol; failures with their errors) and ``summary.png`` (mAP bars per row),
    atomically."""
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": atomic_write_bytes(out / "summary.csv", buf.getvalue().encode())}
    short = [c for c in cols if not c.startswith("mp@")]
    n_comb = len({r["combination"] for r in rows})
    n_ok = len({r["combination"] for r in rows if r["status"] == "done"})
    head = f"{notebook.name} over {n_comb} combinations ({profile} profile): {n_ok} done, {len(failed)} failed"
    md = [f"# Grid: {head}", "", "mAP ×100 (E / M / H, or classic for Oxford5k/Paris6k); mP@k in summary.csv.", "",
          "| " + " | ".join(short) + " |", "|" + "|".join(" --- " for _ in short) + "|"]
    md += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in short) + " |" for r in rows]
    if failed:
        md += ["", "## Failed", ""] + [f"- `{k}`: {v}" for k, v in failed.items()]
    paths["md"] = atomic_write_bytes(out / "summary.md", ("\n".join(md) + "\n").encode())
    cells = lambda r, tag: "".join(f"<{tag}>{html.escape('' if r.get(c) is None else str(r.get(c)))}</{tag}>"
                                   for c in short)
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(head)}</title>",
            f"<h1>{html.escape(head)}</h1><table border='1' cellspacing='0' cellpadding='3'>",
            "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in short) + "</tr>"]
    page += ["<tr>" + cells(r, "td") + "</tr>" for r in rows]
    page.append("</table>")
    if failed:
        page.append("<h2>Failed</h2><ul>" + "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(str(v))}</li>"
                                                   for k, v in failed.items()) + "</ul>")
    paths["html"] = atomic_write_bytes(out / "summary.html", "\n".join(page).encode())
    paths["png"] = _plot(out / "summary.png", rows, head)
    return paths


def _plot(path: Path, rows: list[dict], title: str) -> Path:
    import matplotlib  # lazy: figures only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: figures only

    colours = {"E": "#8fbc8f", "M": "#4682b4", "H": "#b22222", "classic": "#9467bd"}
    scored = [r for r in rows if any(r.get(c) is not None for c in colours)]
    present = [c for c in colours if any(r.get(c) is not None for r in scored)]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.35 * max(1, len(scored))))
    if scored:
        y = np.arange(len(scored))
        h = 0.8 / len(present)
        for j, c in enumerate(present):
            ax.barh(y + (j - (len(present) - 1) / 2) * h, [r.get(c) or 0 for r in scored], height=h,
                    color=colours[c], label=c)
        ax.set_yticks(y, [f"{r['combination']} · {r['method']}" for r in scored], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mAP ×100")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path

"""Running the walk-through notebooks in order with papermill (the demo, the smoke profile of the
tests) and storing the outputs nbval checks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import PROFILE_ENV, ROOT, resolve
from ..io import atomic_write_json
from .layout import RunLayout
from .provenance import provenance
from .store import load_metrics


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
    import papermill as pm  # lazy: notebook runner only

    declared = {nb.name: set(pm.inspect_notebook(str(nb))) for nb in selected}
    unknown = sorted(k for k in parameters if not any(k in names for names in declared.values()))
    if unknown:
        known = sorted(set().union(*declared.values())) if declared else []
        raise ValueError(f"parameter(s) {unknown} are not parameters of any notebook run "
                         f"({', '.join(nb.name for nb in selected)}); known: {known}")
    return {name: {k: v for k, v in parameters.items() if k in names} for name, names in declared.items()}


def run_notebooks(run_dir: str | os.PathLike = "runs/demo", profile: str = "full",
                  parameters: dict | None = None, only: list[str] | None = None,
                  progress: bool = True, fig_dir: str | os.PathLike | None = None,
                  command: list[str] | None = None) -> dict:
    """Execute the notebooks in order with papermill into ``run_dir`` (anywhere on disk); returns
    metrics.json. Each notebook gets ``run_dir``, ``fig_dir`` (default ``<run_dir>/figures``) and those
    of ``parameters`` it declares (:func:`route_parameters`). When every notebook ran, ``<run_dir>/run.json``
    records where the numbers come from (:func:`~retrieval.run.provenance.provenance`: machine, commit,
    date, ``command``, profile, parameters, notebooks, seconds in all and per notebook)."""
    import papermill as pm  # lazy: notebook runner only

    run_dir = resolve(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if not only or any(nb.name.startswith(o) for o in only)]
    if not selected:
        raise ValueError(f"--only {only}: matches no notebook of {[nb.name for nb in notebooks()]}")
    common = dict(run_dir=str(run_dir), fig_dir=str(resolve(fig_dir).absolute()) if fig_dir else None)
    routed = route_parameters(dict(parameters or {}), selected)
    before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile  # the kernels inherit it; their parameters cells read it
    t_all, took = time.perf_counter(), {}
    try:
        for nb in selected:
            t = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {nb.name} ...", flush=True)
            pm.execute_notebook(str(nb), str(run_dir / nb.name), parameters=dict(common, **routed[nb.name]),
                                cwd=str(nb.parent), kernel_name="python3", progress_bar=progress)
            took[nb.stem] = round(time.perf_counter() - t, 1)
            print(f"    done in {took[nb.stem]:.1f} s", flush=True)
    finally:
        if before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = before
    command = command or [f"run_notebooks({str(run_dir)!r}, profile={profile!r})"]
    run_file = RunLayout(run_dir).run_file
    # a later pass over some notebooks (--only) keeps the passes before it: metrics.json holds rows of each
    earlier = json.loads(run_file.read_text()) if only and run_file.is_file() else None
    passes = ([{k: v for k, v in earlier.items() if k != "earlier"}] + earlier.get("earlier", [])) if earlier else []
    atomic_write_json(run_file, provenance(
        command, profile=profile, parameters=dict(parameters or {}), notebooks=[nb.name for nb in selected],
        seconds=round(time.perf_counter() - t_all, 1), notebook_seconds=took, **({"earlier": passes} if passes else {})))
    return load_metrics(run_dir)


def store_check_outputs(run_dir: str | os.PathLike = "runs/smoke") -> list[Path]:
    """Copy the outputs of cells tagged ``nbval-check-output`` from the notebooks executed in
    ``run_dir`` into the source notebooks (their reference for nbval); other cells stay empty.

    Run after changing what a checked cell prints: ``python -m retrieval.run store-checks``.
    """
    import nbformat  # lazy: notebook runner only

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

"""A run's results: ``metrics.json`` (every notebook's evaluation rows) and the ranked lists
(``ranks/<dataset>/<method>.npz``) that 08 and the result browser read.

``metrics.json`` (one per run folder; every notebook adds its entries)::

    {"<dataset>": {"<method>": {"easy": {"map": ..., "mp@1": ...}, "medium": {...}, "hard": {...},
                                "recorded": {"notebook": ..., "image_size": ..., "weights": ...}}}}

(``{"classic": {...}}`` instead of E/M/H for the original Oxford5k / Paris6k, see
:func:`retrieval.metrics.evaluate`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..io import atomic_save_npz, atomic_write_json
from ..metrics import ALL_PROTOCOLS, CLASSIC, PROTOCOL_LABELS, PROTOCOLS, compute_map, gnd_protocols, protocol_gnd
from .layout import RunLayout


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
                   recorded: dict | None = None, aps: dict | None = None) -> str:
    """Add (or replace) ``results[dataset][method]`` in ``<run_dir>/metrics.json``, atomically; returns
    the key it was stored under.

    ``results``: an evaluate() output, E/M/H (revisited sets) or ``classic`` (Oxford5k/Paris6k).
    ``recorded``: where the row comes from (``notebook``, ``image_size``, ``weights`` fingerprint),
    stored beside the protocols. ``aps``: per-query AP per protocol (:func:`~retrieval.metrics.per_query_ap`),
    stored under ``"ap"`` (6 decimals, None for a query without positives) for paired comparisons. A row is replaced by the notebook that wrote it, or by a new measurement
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
    if aps is not None:
        row["ap"] = {p: [round(float(x), 6) if np.isfinite(x) else None for x in np.asarray(v, dtype=float)]
                     for p, v in aps.items()}
    metrics = load_metrics(run_dir)
    rows = metrics.setdefault(dataset, {})
    key, old = method, (rows.get(method) or {}).get("recorded")
    if recorded and old and old.get("notebook") != recorded.get("notebook"):
        if (old.get("image_size"), old.get("weights")) == (recorded.get("image_size"), recorded.get("weights")):
            # the same model measured again: the row keeps its owner and what the owner recorded beside it
            row["recorded"] = {**old, **{k: v for k, v in row["recorded"].items() if k != "notebook"}}
        else:
            key = f"{method} [{recorded.get('notebook')}]"
    rows[key] = row
    atomic_write_json(RunLayout(run_dir).metrics_file, metrics)
    return key


def ranks_path(run_dir: str | os.PathLike, dataset: str, method: str) -> Path:
    """:meth:`RunLayout.ranks <retrieval.run.layout.RunLayout.ranks>` of ``run_dir``."""
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

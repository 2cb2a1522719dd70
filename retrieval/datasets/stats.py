"""What a test set holds: queries, query landmarks, db size, positives and junk per query, distractors.

The same numbers for the synthetic benchmark and for the real revisited ground truth
(``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``), so the docs can set them side by side.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..config import data_dir, resolve
from .revisited import RevisitedDataset, read_revisited


def query_landmarks(ds: RevisitedDataset) -> list[str]:
    """The landmark of each query (the unit a bootstrap resamples).

    A synthetic set: its ``landmarks.json``. The real Oxford/Paris sets (revisited or original, named
    ``roxford5k``/``rparis6k``/``oxford5k``/``paris6k``): the first 55 queries are the original ones,
    5 per landmark in order (11 landmarks); each of the 15 queries the revisited sets added goes to the
    landmark whose positives it shares most. Anything else: the query's name without its trailing
    number (``name_000013`` → ``name``)."""
    file = ds.root / "landmarks.json"
    if file.is_file():
        return list(json.loads(file.read_text())["query"])
    base = ds.name.split("+")[0]
    if base in ("roxford5k", "rparis6k", "oxford5k", "paris6k") and ds.n_query >= 55:
        def positives(g):
            return set(g.get("easy", [])) | set(g.get("hard", [])) | set(g.get("ok", []))
        blocks = [set().union(*(positives(ds.gnd[q]) for q in range(b * 5, b * 5 + 5))) for b in range(11)]
        out = [f"{base}-{q // 5:02d}" for q in range(55)]
        for g in ds.gnd[55:]:
            pos = positives(g)
            out.append(f"{base}-{int(np.argmax([len(pos & blk) for blk in blocks])):02d}")
        return out
    return [re.sub(r"_\d+$", "", q) for q in ds.qimlist]


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return dict(mean=float(v.mean()), min=int(v.min()), max=int(v.max())) if v.size else dict(mean=0.0, min=0, max=0)


def benchmark_stats(ds: RevisitedDataset) -> dict:
    """Sizes of ``ds``: ``queries``, ``query_landmarks``, ``db`` (its own images), ``distractors``
    (appended ones), ``positives`` (easy + hard per query: mean/min/max), ``easy``, ``hard`` and ``junk``
    per query (mean/min/max) and ``part_queries`` (synthetic: queries about one part of a landmark,
    None where unknown). The original Oxford/Paris format counts ``ok`` as positives."""
    gnd = ds.gnd
    revisited = bool(gnd) and "easy" in gnd[0]
    pos = [len(g["easy"]) + len(g["hard"]) if revisited else len(g["ok"]) for g in gnd]
    out = dict(queries=ds.n_query, query_landmarks=len(set(query_landmarks(ds))), db=len(ds.imlist),
               distractors=len(getattr(ds, "distractor_paths", [])), positives=_summary(pos),
               junk=_summary([len(g["junk"]) for g in gnd]))
    if revisited:
        out.update(easy=_summary([len(g["easy"]) for g in gnd]), hard=_summary([len(g["hard"]) for g in gnd]))
    file = ds.root / "landmarks.json"
    parts = json.loads(file.read_text()).get("query_part") if file.is_file() else None
    out["part_queries"] = None if parts is None else sum(p is not None for p in parts)
    return out


def reference_stats(folder: str | os.PathLike | None = None, names=("roxford5k", "rparis6k")) -> dict[str, dict]:
    """:func:`benchmark_stats` of the real revisited sets whose ground truth is found: ``<folder>/gnd_<name>.pkl``
    (``folder`` relative to the repository root), else ``data/test/<name>/gnd_<name>.pkl`` (downloaded);
    sets not found are left out."""
    out = {}
    for name in names:
        candidates = ([resolve(folder) / f"gnd_{name}.pkl"] if folder else []) + [data_dir() / "test" / name / f"gnd_{name}.pkl"]
        found = [p for p in candidates if p.is_file()]
        if found:
            out[name] = benchmark_stats(read_revisited(found[0], name))
    return out


def format_stats_table(stats: dict[str, dict]) -> str:
    """Fixed-width table, one column per set (name → :func:`benchmark_stats`)."""
    names = list(stats)
    w = max([len(n) for n in names] + [16]) + 2

    def cell(s, key):
        v = s.get(key)
        if v is None:
            return "-"
        if isinstance(v, dict):
            return f"{v['mean']:.1f} ({v['min']}-{v['max']})"
        return str(v)

    rows = [("queries", "queries"), ("query landmarks", "query_landmarks"), ("part queries", "part_queries"),
            ("db", "db"), ("distractors", "distractors"), ("positives/query", "positives"),
            ("easy/query", "easy"), ("hard/query", "hard"), ("junk/query", "junk")]
    lines = [f"{'':<18}" + "".join(f"{n:>{w}}" for n in names)]
    lines += [f"{label:<18}" + "".join(f"{cell(stats[n], key):>{w}}" for n in names) for label, key in rows]
    return "\n".join(lines)

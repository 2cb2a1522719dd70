"""Test data in the revisited Oxford/Paris format (Radenović et al., CVPR 2018).

``<root>/test/<name>/gnd_<name>.pkl`` holds ``imlist`` (db image names), ``qimlist`` (query names)
and ``gnd`` (one dict per query: ``bbx`` [x1, y1, x2, y2] and ``easy``/``hard``/``junk`` lists of db
indices); images are ``<root>/test/<name>/jpg/<im>.jpg``. cirtorch's files of the original
Oxford5k/Paris6k have ``ok``/``junk`` lists instead and a top-level ``qidx`` (the db index of each
query image: there the queries are also in the db).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: revisited Oxford/Paris (Radenović et al., CVPR 2018): Easy/Medium/Hard protocols
REVISITED_TEST = ("roxford5k", "rparis6k")
#: original Oxford5k / Paris6k (Philbin et al., CVPR 2007 / 2008) with cirtorch's ground truth
#: (55 queries, ``ok``/``junk``; the query images are in the db): the ``classic`` protocol
CLASSIC_TEST = ("oxford5k", "paris6k")
REAL_TEST = REVISITED_TEST + CLASSIC_TEST

#: keys a gnd entry may hold: revisited (``bbx``, ``easy``, ``hard``, ``junk``) and the original
#: Oxford/Paris lists (``good``, ``ok``, ``junk``)
GND_KEYS = ("bbx", "easy", "hard", "junk", "ok", "good")

@dataclass
class RevisitedDataset:
    name: str
    root: Path          # the dataset folder, <root>/test/<name>
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]
    qidx: list[int] | None = None   # db index of each query (original Oxford5k/Paris6k files only)

    @property
    def n_db(self) -> int:
        return len(self.imlist)

    @property
    def n_query(self) -> int:
        return len(self.qimlist)

    def db_paths(self) -> list[Path]:
        return [self.root / "jpg" / f"{im}.jpg" for im in self.imlist]

    def query_paths(self) -> list[Path]:
        return [self.root / "jpg" / f"{im}.jpg" for im in self.qimlist]

    def bbxs(self) -> list[list[float]]:
        return [list(map(float, g["bbx"])) for g in self.gnd]


def load_revisited(root: str | os.PathLike, name: str) -> RevisitedDataset:
    """Load and validate ``<root>/test/<name>/gnd_<name>.pkl``."""
    return read_revisited(Path(root) / "test" / name / f"gnd_{name}.pkl", name)


def read_revisited(path: str | os.PathLike, name: str) -> RevisitedDataset:
    """Load and validate the ground-truth file ``path`` of test set ``name`` (its images: ``jpg/`` beside it)."""
    path = Path(path)
    folder = path.parent
    if not path.is_file():
        raise FileNotFoundError(f"ground truth not found: {path}")
    try:
        with open(path, "rb") as fh:
            cfg = pickle.load(fh)
    except Exception as e:  # truncated or not a pickle: name the file
        raise ValueError(f"{path}: cannot read the pickle ({type(e).__name__}: {e})") from e
    validate_gnd(cfg, str(path))
    qidx = [int(i) for i in cfg["qidx"]] if cfg.get("qidx") is not None else None
    return RevisitedDataset(name, folder, list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"]), qidx)


def validate_gnd(cfg, where: str = "gnd") -> None:
    """Raise ValueError unless ``cfg`` is a revisited-format ground truth (or cirtorch's original
    Oxford5k/Paris6k one: ``ok``/``junk`` entries and ``qidx``, each query's own db index)."""
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{where}: expected a dict with 'imlist', 'qimlist' and 'gnd', got {got}")
    n_db, n_q = len(cfg["imlist"]), len(cfg["qimlist"])
    if len(cfg["gnd"]) != n_q:
        raise ValueError(f"{where}: {len(cfg['gnd'])} gnd entries for {n_q} queries in qimlist")
    if cfg.get("qidx") is not None:
        q = np.asarray(cfg["qidx"])
        if q.shape != (n_q,) or (q.size and q.dtype.kind not in "iu"):
            raise ValueError(f"{where}: 'qidx' must hold one integer db index per query ({n_q}), "
                             f"got shape {q.shape} dtype {q.dtype}")
        bad = [i for i, j in enumerate(q.tolist()) if not 0 <= j < n_db or cfg["imlist"][j] != cfg["qimlist"][i]]
        if bad:
            i = bad[0]
            raise ValueError(f"{where}: qidx[{i}] = {q[i]} does not point at query {cfg['qimlist'][i]!r} "
                             f"in imlist ({len(bad)} such entries)")
    for i, g in enumerate(cfg["gnd"]):
        if not isinstance(g, dict):
            raise ValueError(f"{where}: gnd[{i}] must be a dict, got {type(g).__name__}")
        unknown = sorted(map(str, set(g) - set(GND_KEYS)))
        if unknown:
            raise ValueError(f"{where}: gnd[{i}] has unknown keys {unknown}; expected some of {list(GND_KEYS)}")
        if "bbx" in g and g["bbx"] is not None:
            b = np.asarray(g["bbx"])
            if b.shape != (4,) or b.dtype.kind not in "iuf" or not np.isfinite(b).all() \
                    or not (b[0] < b[2] and b[1] < b[3]):
                raise ValueError(f"{where}: gnd[{i}]['bbx'] must be finite [x1, y1, x2, y2] with x1 < x2 "
                                 f"and y1 < y2, got {g['bbx']!r}")
        keys = [k for k in ("easy", "hard", "junk", "ok", "good") if k in g]
        if not keys:
            raise ValueError(f"{where}: gnd[{i}] has none of 'easy', 'hard', 'junk' (keys: {sorted(g)})")
        for k in keys:
            raw = np.asarray(g[k] if g[k] is not None else [])
            if raw.size and raw.dtype.kind not in "iu":
                raise ValueError(f"{where}: gnd[{i}]['{k}'] must hold integer db indices, got dtype {raw.dtype}")
            idx = raw.astype(np.int64).ravel()
            if idx.size and (idx.min() < 0 or idx.max() >= n_db):
                raise ValueError(f"{where}: gnd[{i}]['{k}'] has indices outside [0, {n_db}) "
                                 f"(min {idx.min()}, max {idx.max()})")

"""The R1M distractor set (revisitop1m; Radenović et al., CVPR 2018) appended to a test database.

Distractors go after the dataset's own db images, so the ground truth's db indices stay valid and
every distractor counts as a negative. ``distractors="r1m"`` takes all 100 downloaded parts,
``"r1m-N"`` parts 1..N (about 10,000 images each) for a quicker, smaller run; the parts are those
unpacked by ``python -m retrieval.datasets download revisitop1m [--parts 1-N]``, whose member lists
are recorded in ``data/downloads/revisitop1m/*.extracted.json``. Without those records (images
placed by another script), ``"r1m"`` falls back to the official list ``revisitop1m.txt``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .revisited import RevisitedDataset

R1M_PARTS = 100
_SPEC = re.compile(r"^r1m(?:-(\d+))?$")


@dataclass
class DistractedDataset(RevisitedDataset):
    """A revisited test set whose database is extended by distractor images (their paths in
    ``distractor_paths``); ``name`` is ``<dataset>+<distractors>`` so features are cached apart."""

    distractor_paths: list[Path] = field(default_factory=list)

    @property
    def n_db(self) -> int:
        return len(self.imlist) + len(self.distractor_paths)

    def db_paths(self) -> list[Path]:
        return super().db_paths() + list(self.distractor_paths)


def check_spec(distractors: str | None) -> int | None:
    """``None`` → None; ``"r1m"`` → 100; ``"r1m-N"`` → N (1..100); ValueError otherwise."""
    if distractors is None:
        return None
    m = _SPEC.match(distractors) if isinstance(distractors, str) else None
    n = int(m.group(1)) if m and m.group(1) else R1M_PARTS
    if not m or not 1 <= n <= R1M_PARTS:
        raise ValueError(f"distractors={distractors!r}: expected None, 'r1m' (all {R1M_PARTS} parts) or "
                         f"'r1m-N' (parts 1..N, 1 <= N <= {R1M_PARTS})")
    return n


def r1m_paths(root: str | os.PathLike, distractors: str = "r1m") -> list[Path]:
    """Image paths of the R1M parts ``distractors`` names (see the module docstring), in part order."""
    n = check_spec(distractors)
    root = Path(root)
    folder, records = root / "test" / "revisitop1m" / "jpg", root / "downloads" / "revisitop1m"
    markers = [records / f"revisitop1m.{k}.tar.gz.extracted.json" for k in range(1, n + 1)]
    have = [m for m in markers if m.is_file()]
    listing = root / "test" / "revisitop1m" / "revisitop1m.txt"
    if not have and n == R1M_PARTS and listing.is_file():
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        paths = [folder / (nm if Path(nm).suffix else f"{nm}.jpg") for nm in names]
    elif len(have) < n:
        missing = [k for k, m in zip(range(1, n + 1), markers) if not m.is_file()]
        raise FileNotFoundError(f"distractors={distractors!r} needs R1M parts 1..{n}, but parts {missing[:10]}"
                                f"{'...' if len(missing) > 10 else ''} are not unpacked under {folder}: run "
                                f"`python -m retrieval.datasets download revisitop1m --parts 1-{n}`")
    else:
        paths = [folder / rel for m in markers for rel in json.loads(m.read_text())["files"]]
    absent = [p for p in paths[:: max(1, len(paths) // 1000)] if not p.is_file()]  # a sample: 1M stats are slow
    if absent:
        raise FileNotFoundError(f"distractor images missing, e.g. {absent[0]}; download revisitop1m again")
    return paths


def add_distractors(ds: RevisitedDataset, paths: list[Path], tag: str) -> DistractedDataset:
    """``ds`` with ``paths`` appended to its database, named ``<ds.name>+<tag>``."""
    return DistractedDataset(f"{ds.name}+{tag}", ds.root, list(ds.imlist), list(ds.qimlist), list(ds.gnd),
                             qidx=ds.qidx, distractor_paths=[Path(p) for p in paths])

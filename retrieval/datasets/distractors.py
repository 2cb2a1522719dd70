"""Distractor images appended to a test database: the real R1M set (revisitop1m; Radenović et al.,
CVPR 2018) or its rendered analogue for the synthetic benchmark.

Distractors go after the dataset's own db images, so the ground truth's db indices stay valid and
every distractor counts as a negative. The ``distractors`` parameter names them:

* ``"r1m"``: all 100 downloaded R1M parts; ``"r1m-N"``: parts 1..N (about 10,000 images each), those
  unpacked by ``python -m retrieval.datasets download revisitop1m [--parts 1-N]``, whose member lists
  are recorded in ``data/downloads/revisitop1m/*.extracted.json``. Without those records (images
  placed by another script), ``"r1m"`` falls back to the official list ``revisitop1m.txt``.
* ``"synth-N"`` or ``"synth-Nk"`` (e.g. ``"synth-10k"``): the first N images of the synthetic
  benchmark's rendered distractor set (:func:`render_distractors`): views of landmarks that appear
  nowhere else and street scenes with no landmark, from the same renderer, preset and seed as the
  test set. Image i depends only on (seed, i), so N = 5k is a prefix of N = 10k.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import data_dir
from ..io import atomic_write_json
from . import synthetic
from .revisited import RevisitedDataset

R1M_PARTS = 100
_SPEC = re.compile(r"^r1m(?:-(\d+))?$")
_SYNTH_SPEC = re.compile(r"^synth-(\d+)(k?)$")
#: format of the rendered distractor set; a folder of another version is rendered again
DISTRACTOR_VERSION = 1
VIEWS_PER_DISTRACTOR_LANDMARK = 10   # consecutive images share a landmark (a street scene replaces some)
STREET_SHARE = 0.25                  # share of street scenes without a landmark


@dataclass
class DistractedDataset(RevisitedDataset):
    """A revisited test set whose database is extended by distractor images (their paths in
    ``distractor_paths``); ``name`` is ``<dataset>+<distractors>`` so features are cached apart.
    ``base_name``: the plain test set's name; ``distractor_set``: a name of the distractor images'
    source (the same images for every test set that takes them: their features are shared)."""

    distractor_paths: list[Path] = field(default_factory=list)
    base_name: str = ""
    distractor_set: str = ""

    @property
    def n_db(self) -> int:
        return len(self.imlist) + len(self.distractor_paths)

    def db_paths(self) -> list[Path]:
        return super().db_paths() + list(self.distractor_paths)

    def base(self) -> RevisitedDataset:
        """The plain test set (no distractors)."""
        return RevisitedDataset(self.base_name, self.root, list(self.imlist), list(self.qimlist), list(self.gnd),
                                qidx=self.qidx)


def parse_spec(distractors: str | None) -> tuple[str, int] | None:
    """``None`` → None; ``"r1m"`` → ("r1m", 100); ``"r1m-N"`` → ("r1m", N) parts; ``"synth-N"`` /
    ``"synth-Nk"`` → ("synth", N) images. ValueError naming the parameter otherwise."""
    if distractors is None:
        return None
    text = distractors if isinstance(distractors, str) else ""
    m = _SPEC.match(text)
    if m:
        n = int(m.group(1)) if m.group(1) else R1M_PARTS
        if 1 <= n <= R1M_PARTS:
            return "r1m", n
    m = _SYNTH_SPEC.match(text)
    if m and int(m.group(1)) > 0:
        return "synth", int(m.group(1)) * (1000 if m.group(2) else 1)
    raise ValueError(f"distractors={distractors!r}: expected None, 'r1m' (all {R1M_PARTS} R1M parts), 'r1m-N' "
                     f"(parts 1..N, 1 <= N <= {R1M_PARTS}) or 'synth-N' / 'synth-Nk' (the first N rendered "
                     "synthetic distractors, e.g. 'synth-10k')")


def synth_spec(n: int) -> str:
    """The ``distractors`` value naming the first ``n`` rendered distractors: ``synth-5k`` for whole
    thousands, else ``synth-<n>`` (the inverse of :func:`parse_spec`)."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return f"synth-{n // 1000}k" if n % 1000 == 0 else f"synth-{n}"


def check_spec(distractors: str | None) -> int | None:
    """The count a ``distractors`` value names (R1M parts or rendered images), None for None; ValueError
    naming the parameter when it does not parse (:func:`parse_spec`)."""
    spec = parse_spec(distractors)
    return None if spec is None else spec[1]


def r1m_paths(root: str | os.PathLike, distractors: str = "r1m") -> list[Path]:
    """Image paths of the R1M parts ``distractors`` names (see the module docstring), in part order."""
    kind, n = parse_spec(distractors)
    if kind != "r1m":
        raise ValueError(f"distractors={distractors!r} does not name R1M parts ('r1m' or 'r1m-N')")
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


# ----------------------------------------------------------------------------------------------
# the rendered distractor set of the synthetic benchmark


def distractor_set_name(name: str) -> str:
    """Folder name of the rendered distractors of the synthetic test set ``name``: ``<name>-distractors``."""
    return f"{name}-distractors"


def distractor_job(seed: int, i: int) -> tuple[str | None, str, str]:
    """(landmark key or None for a street scene, view id, mode) of distractor image ``i``: a function
    of ``seed`` and ``i`` only, so every N is a prefix of a larger N."""
    rng = np.random.default_rng(synthetic.seed_ints(seed, "rdistractor", i))
    street = rng.random() < STREET_SHARE
    mode = str(rng.choice(["easy", "hard", "junk"], p=[0.5, 0.4, 0.1]))
    key = None if street else f"rdistractor{i // VIEWS_PER_DISTRACTOR_LANDMARK:06d}"
    return key, f"rdistractor-v{i}", "easy" if street else mode


def _manifest(cfg: synthetic.SyntheticConfig, name: str) -> dict:
    return dict(format_version=DISTRACTOR_VERSION, renderer_version=synthetic.FORMAT_VERSION, benchmark=name,
                width=cfg.width, height=cfg.height, difficulty=cfg.difficulty, seed=cfg.seed,
                views_per_landmark=VIEWS_PER_DISTRACTOR_LANDMARK, street_share=STREET_SHARE)


def render_distractors(n: int, preset: str = "default", root: str | os.PathLike | None = None,
                       difficulty: float = 1.0, seed: int = 0, workers: int | None = None,
                       progress: bool = True) -> Path:
    """Render the first ``n`` distractor images of a synthetic benchmark (R1M's analogue) into
    ``<root>/test/<name>-distractors/`` (``jpg/d_<i>.jpg``, per-image ``meta/``, ``manifest.json`` with
    the count rendered). Images already there are kept (an interrupted run resumes; a larger ``n``
    adds to a smaller one); a folder made by another renderer version or configuration is removed
    first, so versions never mix. Returns the folder."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n (distractor images to render) must be an int >= 0, got {n!r}")
    cfg = synthetic.make_config(preset, difficulty, seed)
    name = synthetic.dataset_name(preset, difficulty, seed)
    folder = Path(root if root is not None else data_dir()) / "test" / distractor_set_name(name)
    want = _manifest(cfg, name)
    have = _read_json(folder / "manifest.json") or _read_json(folder / "generating.json")
    if have is not None and {k: have.get(k) for k in want} != want:
        shutil.rmtree(folder, ignore_errors=True)
        have = None
    if have is not None and have.get("n", -1) >= n and (folder / "manifest.json").is_file():
        return folder
    atomic_write_json(folder / "generating.json", want)
    tasks = []
    for i in range(n):
        key, view_id, mode = distractor_job(seed, i)
        tasks.append((seed, key, view_id, mode, cfg.width, cfg.height, cfg.difficulty,
                      str(folder / "jpg" / f"d_{i:07d}.jpg"), str(folder / "meta" / f"d_{i:07d}.json")))
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = dict(total=len(tasks), desc=f"rendering {folder.name}", disable=not progress, unit="img")
    if workers > 1 and len(tasks) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in tqdm(pool.imap(synthetic._render_job, tasks, chunksize=VIEWS_PER_DISTRACTOR_LANDMARK), **bar):
                pass
    else:
        for t in tqdm(tasks, **bar):
            synthetic._render_job(t)
    atomic_write_json(folder / "manifest.json", {**want, "n": max(n, (have or {}).get("n", 0))})
    (folder / "generating.json").unlink(missing_ok=True)
    return folder


def synth_distractor_paths(root: str | os.PathLike, name: str, distractors: str) -> list[Path]:
    """Paths of the first N rendered distractors of the synthetic test set ``name`` that
    ``distractors`` (``"synth-N"``) names; FileNotFoundError naming the parameter when fewer are rendered."""
    kind, n = parse_spec(distractors)
    if kind != "synth":
        raise ValueError(f"distractors={distractors!r} does not name rendered distractors ('synth-N')")
    folder = Path(root) / "test" / distractor_set_name(name)
    man = _read_json(folder / "manifest.json") or {}
    rendered = int(man.get("n", 0)) if man.get("benchmark") == name else 0
    if rendered < n:
        preset = name.split("-")[1] if name.count("-") >= 1 else "default"
        raise FileNotFoundError(f"distractors={distractors!r} asks for {n} rendered distractors of {name}, but "
                                f"{rendered} are rendered under {folder}: render them with 00_data "
                                f"(n_distractors={n}) or `python -m retrieval.datasets generate --preset {preset} "
                                f"--distractors {n}`")
    return [folder / "jpg" / f"d_{i:07d}.jpg" for i in range(n)]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def add_distractors(ds: RevisitedDataset, paths: list[Path], tag: str, distractor_set: str = "") -> DistractedDataset:
    """``ds`` with ``paths`` appended to its database, named ``<ds.name>+<tag>``; ``distractor_set``
    names the images' source (default: ``tag``)."""
    return DistractedDataset(f"{ds.name}+{tag}", ds.root, list(ds.imlist), list(ds.qimlist), list(ds.gnd),
                             qidx=ds.qidx, distractor_paths=[Path(p) for p in paths], base_name=ds.name,
                             distractor_set=distractor_set or tag)

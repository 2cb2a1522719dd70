"""Your own photos as a benchmark: :func:`import_collection` writes a collection of landmark photos (a folder
of landmark folders or a CSV; layouts and rules: :mod:`retrieval.datasets.collection`) in the lab's formats:
the test set ``<root>/test/<name>/`` (revisited Oxford: ``gnd_<name>.pkl``, images ``jpg/<im>.jpg``,
``landmarks.json``, ``manifest.json``), the validation benchmark ``<root>/test/<name>-val/`` in the same format,
and the training split ``<root>/train/<name>/`` (retrieval-SfM-120k: ``<name>.pkl``, images at
``cid2filename(cid, ims)``, ``cid`` the md5 of ``<landmark>/<image name>``). ``python -m retrieval.datasets
import SRC --name NAME`` runs it; the notebooks then take ``dataset=NAME`` and ``val_dataset=NAME-val``.

Everything is written into a temporary folder inside ``root`` and renamed into place at the end; bad input
raises before anything is renamed (ValueError / FileNotFoundError naming the file, or the CSV line, and what
was expected), and an existing name is refused unless ``overwrite``. The same input gives byte-identical files
(no timestamps; every order fixed).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..config import data_dir
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_pickle
from .collection import IMAGE_EXTENSIONS, LABELS, Photo, pick, plan_import, read_collection
from .images import load_image
from .revisited import REAL_TEST, read_revisited, validate_gnd
from .stats import benchmark_stats
from .synthetic import seed_ints
from .tuples import cid2filename

FORMAT_VERSION = 1
#: names of the data the downloader places under test/ or train/ (with their aliases): never an imported name
DOWNLOADED = ("revisitop1m", "r1m", "retrieval-SfM-120k", "rsfm120k", "gldv2-clean", "gldv2")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
JPEG_QUALITY = 95
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def check_name(name: str) -> str:
    """``name`` if it can be an imported set's name: a plain folder name (letters, digits, ``_ . -``, at most
    100 characters) that is not synthetic (``synth*``), a real set or downloaded data, and does not end in
    ``-val`` (the name of an import's validation benchmark); ValueError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"name {name!r}: expected a plain folder name (letters, digits, '_', '.', '-'; "
                         "starting with a letter or digit; at most 100 characters)")
    if name.lower().startswith("synth"):
        raise ValueError(f"name {name!r}: names starting with 'synth' are the synthetic benchmark's; choose another")
    if name.lower() in {n.lower() for n in REAL_TEST + DOWNLOADED}:
        raise ValueError(f"name {name!r} is a real dataset's ({', '.join(REAL_TEST + DOWNLOADED)}); choose another")
    if name.endswith("-val"):
        raise ValueError(f"name {name!r}: '<name>-val' is the validation benchmark of an import; choose a name "
                         "without the '-val' ending")
    return name


def imported_names(root: str | os.PathLike | None = None) -> list[str]:
    """Test sets under ``<root>/test`` that are neither synthetic nor real (``<root>/test/<n>/gnd_<n>.pkl``
    exists): imported ones and their ``-val`` benchmarks, sorted."""
    folder = (Path(root) if root is not None else data_dir()) / "test"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if not p.name.startswith((".", "synth")) and p.name not in REAL_TEST
                  and (p / f"gnd_{p.name}.pkl").is_file())


def _image_bytes(photo: Photo) -> tuple[bytes, tuple[int, int]]:
    """The JPEG bytes to store for ``photo`` and the stored image's (width, height) in pixels."""
    try:
        img = load_image(photo.path)  # the whole image decoded: unreadable or truncated files fail here
        with Image.open(photo.path) as im:
            fmt, orientation = im.format, im.getexif().get(0x0112, 1)
    except (ValueError, OSError) as e:
        at = f"{photo.where}: " if photo.where != str(photo.path) else ""
        raise ValueError(f"{at}{e}; expected a complete image file that PIL reads "
                         f"({', '.join(IMAGE_EXTENSIONS)})") from e
    if fmt == "JPEG" and orientation not in _ORIENTATION:
        return photo.path.read_bytes(), img.size
    if orientation in _ORIENTATION:
        img = img.transpose(_ORIENTATION[orientation])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: colour at full resolution
    return buf.getvalue(), img.size


def _bbx(photo: Photo, size: tuple[int, int]) -> list[float]:
    w, h = size
    if photo.box is None:
        return [0.0, 0.0, float(w), float(h)]
    x1, y1, x2, y2 = photo.box
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"{photo.where}: box {list(photo.box)} is not inside the {w}x{h} image {photo.path}; "
                         f"expected 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h} (pixels of the upright image)")
    return [float(v) for v in photo.box]


def _write_benchmark(folder: Path, name: str, part: str, plan: dict, sizes: dict, seed: int, manifest: dict) -> None:
    """gnd, landmarks.json and manifest.json of the test set (``part="test"``: its landmarks and the
    distractors) or of the validation benchmark (``"val"``) into ``folder``."""
    lms, distractors = plan[part], (plan["distractors"] if part == "test" else [])
    queries = [p for lm in lms for p in plan["queries"][lm]]
    db = [p for lm in lms + distractors for p in plan["db"][lm]]
    rng = np.random.default_rng(seed_ints(seed, "import", "db-order", part))
    db = [db[i] for i in rng.permutation(len(db)).tolist()]
    index: dict[str, dict[str, list[int]]] = {lm: {k: [] for k in LABELS} for lm in lms}
    for i, p in enumerate(db):
        if p.landmark in index:
            index[p.landmark][p.label or "easy"].append(i)
    gnd = [dict(bbx=_bbx(p, sizes[p.name]), **{k: list(v) for k, v in index[p.landmark].items()}) for p in queries]
    cfg = {"imlist": [p.name for p in db], "qimlist": [p.name for p in queries], "gnd": gnd}
    validate_gnd(cfg, str(folder / f"gnd_{name}.pkl"))
    atomic_write_pickle(folder / f"gnd_{name}.pkl", cfg)
    atomic_write_json(folder / "landmarks.json", {
        "db": [p.landmark for p in db], "query": [p.landmark for p in queries],
        "db_label": [(p.label or "easy") if p.landmark in index else None for p in db],
        "query_part": [None] * len(queries)})
    atomic_write_json(folder / "manifest.json", dict(manifest, name=name))


def _cid(photo: Photo) -> str:
    return hashlib.md5(f"{photo.landmark}/{photo.name}".encode()).hexdigest()


def _sfm_split(lms: list[str], plan: dict, ids: dict, seed: int, pairs_per_landmark: int) -> dict:
    cids, cluster, qidxs, pidxs = [], [], [], []
    for lm in lms:
        c = ids.setdefault(lm, len(ids))
        good = []
        for p in plan["photos"][lm]:
            if p.label != "junk":
                good.append(len(cids))
            cids.append(_cid(p))
            cluster.append(c)
        pairs = pick([(a, b) for a in good for b in good if a != b], pairs_per_landmark, seed, "pairs", lm)
        qidxs += [a for a, _ in pairs]
        pidxs += [b for _, b in pairs]
    return {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs, "labels": list(cluster)}


def import_collection(src: str | os.PathLike, name: str, root: str | os.PathLike | None = None,
                      queries_per_landmark: int = 2, val_landmarks: float = 0, train_landmarks: float = 0,
                      seed: int = 0, overwrite: bool = False, pairs_per_landmark: int = 100,
                      progress: bool = True) -> dict:
    """Import the photos of ``src`` (a folder of landmark folders, or a CSV; layouts and rules:
    :mod:`retrieval.datasets.collection`) as the test set ``name`` under ``root`` (default
    :func:`~retrieval.config.data_dir`), with the validation benchmark ``<name>-val`` when ``val_landmarks``
    and the training split ``name`` when there are training landmarks (``train_landmarks`` or CSV
    ``role=train``). ``queries_per_landmark``: queries drawn per landmark without ``role=query`` rows
    (``min(N, images // 2)``); ``pairs_per_landmark``: most training pairs per landmark; ``seed``: every
    draw; ``overwrite``: replace an existing import of ``name``; ``progress``: a tqdm bar over the images.

    Returns ``{"name", "source", "layout": "folders" | "csv", "paths": {"test", "val", "train"}`` (None for
    a part not made), ``"test"`` and ``"val"``: :func:`~retrieval.datasets.stats.benchmark_stats` (or None),
    ``"train"``: ``{"images", "landmarks", "pairs", "val_images"}`` (or None), ``"skipped"``: files that are
    not images}``; :func:`format_summary` prints it.
    """
    check_name(name)
    if isinstance(pairs_per_landmark, bool) or not isinstance(pairs_per_landmark, (int, np.integer)) \
            or pairs_per_landmark < 1:
        raise ValueError(f"pairs_per_landmark: expected an integer >= 1, got {pairs_per_landmark!r}")
    src = Path(src).expanduser()
    root = Path(root) if root is not None else data_dir()
    targets = {"test": root / "test" / name, "val": root / "test" / f"{name}-val", "train": root / "train" / name}
    there = [str(p) for p in targets.values() if p.exists()]
    if there and not overwrite:
        raise FileExistsError(f"name {name!r} exists already ({', '.join(there)}); pass overwrite=True "
                              "(--overwrite) to replace it, or choose another name")
    layout, photos, skipped = read_collection(src)
    plan = plan_import(photos, queries_per_landmark, val_landmarks, train_landmarks, seed)
    manifest = dict(format_version=FORMAT_VERSION, kind="imported", source=str(src.resolve()), layout=layout,
                    queries_per_landmark=int(queries_per_landmark), val_landmarks=float(val_landmarks),
                    train_landmarks=float(train_landmarks), seed=int(seed), pairs_per_landmark=int(pairs_per_landmark))
    made = {"test": True, "val": bool(plan["val"]), "train": bool(plan["train"])}
    train_info, ids, sfm = None, {}, {}
    if made["train"]:  # the training split's lists (they depend on the plan alone)
        sfm["train"] = _sfm_split(plan["train"], plan, ids, seed, pairs_per_landmark)
        if plan["val"]:
            sfm["val"] = _sfm_split(plan["val"], plan, ids, seed, pairs_per_landmark)
        if not sfm["train"]["qidxs"]:
            raise ValueError(f"{src}: the training landmarks {plan['train']} give no pair of two non-junk "
                             "images; expected at least one training landmark with 2 such images")
        train_info = dict(images=len(sfm["train"]["cids"]), landmarks=len(plan["train"]),
                          pairs=len(sfm["train"]["qidxs"]), val_images=len(sfm.get("val", {}).get("cids", [])))

    new_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=root))
    try:
        stage = {k: staging / k for k in targets}
        jobs = [(stage["test"] / "jpg" / f"{p.name}.jpg", p) for lm in plan["test"] + plan["distractors"]
                for p in plan["queries"][lm] + plan["db"][lm]]
        jobs += [(stage["val"] / "jpg" / f"{p.name}.jpg", p) for lm in plan["val"]
                 for p in plan["queries"][lm] + plan["db"][lm]]
        if made["train"]:
            jobs += [(Path(cid2filename(_cid(p), stage["train"] / "ims")), p) for lm in plan["train"] + plan["val"]
                     for p in plan["photos"][lm]]
        sizes = {}
        for dest, photo in tqdm(jobs, desc=f"importing {name}", unit="img", disable=not progress):
            data, sizes[photo.name] = _image_bytes(photo)
            atomic_write_bytes(dest, data)
        _write_benchmark(stage["test"], name, "test", plan, sizes, seed, manifest)
        if made["val"]:
            _write_benchmark(stage["val"], f"{name}-val", "val", plan, sizes, seed, manifest)
        if made["train"]:
            atomic_write_pickle(stage["train"] / f"{name}.pkl", sfm)
            atomic_write_json(stage["train"] / "manifest.json", dict(manifest, name=name, landmarks=list(ids)))
        stats = {k: benchmark_stats(read_revisited(stage[k] / f"gnd_{n}.pkl", n)) if made[k] else None
                 for k, n in (("test", name), ("val", f"{name}-val"))}
        _swap_in(staging, stage, targets, made)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if new_root and not any(root.iterdir()):  # a failed import into a new data folder: not even the folder
            root.rmdir()
    return dict(name=name, source=str(src), layout=layout,
                paths={k: (targets[k] if made[k] else None) for k in targets},
                test=stats["test"], val=stats["val"], train=train_info, skipped=skipped)


def _swap_in(staging: Path, stage: dict, targets: dict, made: dict) -> None:
    """Rename the staged folders into place (an existing import moved aside first, and restored when a
    rename fails), with the permissions a new folder gets (mkdtemp's are private)."""
    umask = os.umask(0)
    os.umask(umask)
    old, placed, parents = staging / "replaced", [], []
    old.mkdir()
    try:
        for k, target in targets.items():
            if target.exists():
                os.rename(target, old / k)
        for k, target in targets.items():
            if made[k]:
                for folder in [stage[k], *(p for p in stage[k].rglob("*") if p.is_dir())]:
                    os.chmod(folder, 0o777 & ~umask)
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True)
                    parents.append(target.parent)
                os.rename(stage[k], target)
                placed.append(target)
    except BaseException:
        for target in placed:
            shutil.rmtree(target, ignore_errors=True)
        for k, target in targets.items():
            if (old / k).exists():
                os.rename(old / k, target)
        for folder in parents:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def format_summary(summary: dict) -> str:
    """What :func:`import_collection` made, a few lines: queries, db images, landmarks, positives per query
    (mean/min/max), the validation benchmark and the training split's images and pairs."""

    def bench(s, path):
        pos, junk = s["positives"], s["junk"]
        return (f"{path}: {s['queries']} queries of {_n(s['query_landmarks'], 'landmark')}, {s['db']} db images; "
                f"positives per query {pos['mean']:.1f} (min {pos['min']}, max {pos['max']}; hard "
                f"{s['hard']['mean']:.1f}), junk {junk['mean']:.1f}")

    p = summary["paths"]
    lines = [f"imported {summary['name']} from {summary['source']} ({summary['layout']})",
             "  test  " + bench(summary["test"], p["test"]),
             "  val   " + (bench(summary["val"], p["val"]) if summary["val"] else
                          "none (--val-landmarks F: a validation benchmark <name>-val, what 02 and 03 tune on)")]
    t = summary["train"]
    if t:
        lines.append(f"  train {p['train']}: {t['images']} images of {_n(t['landmarks'], 'landmark')}, {t['pairs']} pairs"
                     + (f" (+ val: {t['val_images']} images)" if t["val_images"] else ""))
    else:
        lines.append("  train none (--train-landmarks F or CSV role=train: what 02 fine-tunes on)")
    if summary["test"]["hard"]["max"] == 0:
        lines.append("  note: no hard positives (label=hard in a CSV), so Hard mAP is undefined (NaN) on the test set")
    if summary["skipped"]:
        lines.append(f"  skipped {len(summary['skipped'])} file(s) that are not images, e.g. {summary['skipped'][0]}")
    return "\n".join(lines)

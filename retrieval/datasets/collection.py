"""A collection of your own landmark photos: its two layouts (:func:`read_collection`) and the rules that
decide which photo is a query, a db image, a validation or a training image (:func:`plan_import`); what
:func:`~retrieval.datasets.importer.import_collection` writes from them.

Two layouts of ``src``:

* a folder with one sub-folder per landmark, ``src/<landmark>/<image>`` (``.jpg .jpeg .png .bmp .webp
  .tif .tiff .gif .ppm``, any case; hidden files are ignored, other files skipped and listed);
* a CSV file with the header ``image,landmark[,role][,label][,x1,y1,x2,y2]``: ``image`` a path relative to
  the CSV's folder (or absolute), ``role`` ``query`` / ``db`` / ``train`` (empty: decided by the rules below),
  ``label`` ``easy`` / ``hard`` / ``junk`` (a db image's label for its landmark's queries; a ``train``
  row labelled ``junk`` joins no pair), ``x1,y1,x2,y2`` a query's region in pixels (all four or none; empty:
  the whole image).

Rules (deterministic: every random choice is drawn from ``seed`` and what it is about, never from the order
of the files on disk):

1. Training landmarks: every landmark with a ``role=train`` row (then all its rows must be ``train``),
   plus ``train_landmarks`` of the landmarks without any role given and with at least 2 images.
2. Queries of every other landmark: its ``role=query`` rows; without any, ``min(queries_per_landmark,
   n // 2)`` of its images with neither role nor label (n: the landmark's images), so a landmark keeps at
   least as many db images as queries. All its other images are db images: easy unless labelled. A landmark
   left without queries (a single image, or only ``db`` rows) is a distractor: db only, positive for nothing.
3. Validation benchmark ``<name>-val``: ``val_landmarks`` of the landmarks with queries, with their db images
   (the distractors stay in the test db). The test set keeps at least one landmark with queries.
4. ``train_landmarks`` / ``val_landmarks``: 0 (none), a fraction in (0, 1) of the eligible landmarks
   (rounded half up, at least 1), or a whole count >= 1.
5. The training split's ``train`` holds the training landmarks, its ``val`` the validation benchmark's
   landmarks (queries and db images: 02 tunes its whitening on them when no validation benchmark is named);
   ``cluster`` and ``labels`` are landmark ids, ``qidxs`` / ``pidxs`` ordered pairs of two non-junk images of
   one landmark (at most ``pairs_per_landmark`` per landmark, drawn from ``seed``).

An image's name (``imlist``, ``qimlist``) is its file name without the extension, so names must be unique
across the collection (case-insensitively). JPEG files are copied byte for byte; other formats, and JPEGs
with an EXIF rotation (applied first, so boxes are in the upright image as a viewer shows it), are decoded and
saved as JPEG (quality 95, 4:4:4) by the importer. The db order is a seeded permutation (it carries no landmark
information).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synthetic import seed_ints

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
ROLES = ("query", "db", "train")
LABELS = ("easy", "hard", "junk")
BOX = ("x1", "y1", "x2", "y2")
COLUMNS = ("image", "landmark", "role", "label") + BOX


@dataclass(frozen=True)
class Photo:
    """One image of the collection: ``where`` names it in messages (the file, or ``<csv>:<line>``)."""

    path: Path
    landmark: str
    role: str = ""                  # "", "query", "db", "train"
    label: str = ""                 # "", "easy", "hard", "junk"
    box: tuple | None = None        # a query's region (x1, y1, x2, y2), pixels
    where: str = ""

    @property
    def name(self) -> str:
        return self.path.stem


def read_folders(src: Path) -> tuple[list[Photo], list[str]]:
    """The photos of ``src/<landmark>/<image>`` and the files skipped (not images), both sorted."""
    photos, skipped, landmarks = [], [], 0
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_EXTENSIONS:
                raise ValueError(f"{entry}: an image directly in {src}; expected one sub-folder per landmark "
                                 f"({src}/<landmark>/<image>)")
            skipped.append(str(entry))
            continue
        landmarks += 1
        found, other = [], []
        for f in sorted(entry.iterdir()):
            if f.name.startswith("."):
                continue
            if f.is_dir():
                raise ValueError(f"{f}: a folder inside the landmark folder {entry.name!r}; expected its images "
                                 "directly in it (one level: <landmark>/<image>)")
            (found if f.suffix.lower() in IMAGE_EXTENSIONS else other).append(f)
        if not found:
            raise ValueError(f"{entry}: empty landmark folder, no image files ({', '.join(IMAGE_EXTENSIONS)})"
                             + (f"; found {len(other)} other file(s), e.g. {other[0].name}" if other else ""))
        photos += [Photo(f, entry.name, where=str(f)) for f in found]
        skipped += [str(f) for f in other]
    if not landmarks:
        raise ValueError(f"{src}: no landmark folders; expected {src}/<landmark>/<image>")
    return photos, skipped


def read_csv(path: Path) -> list[Photo]:
    """The photos a CSV lists (see the module's docstring for its columns)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read it as CSV text ({e}); expected UTF-8 lines "
                         "image,landmark[,role][,label][,x1,y1,x2,y2]") from e
    if not rows:
        raise ValueError(f"{path}: empty file; expected the header image,landmark[,role][,label][,x1,y1,x2,y2]")
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in ("image", "landmark") if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        problem = (f"unknown column(s) {unknown}" if unknown else f"missing column(s) {missing}" if missing
                   else "a column named twice")
        raise ValueError(f"{path}:1: {problem} in the header {rows[0]}; expected image,landmark and optionally "
                         "role, label, x1,y1,x2,y2")
    has_box = [c in header for c in BOX]
    if any(has_box) and not all(has_box):
        raise ValueError(f"{path}:1: box columns {[c for c in BOX if c in header]}; expected all of x1,y1,x2,y2 "
                         "or none")
    photos, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in row):
            continue  # blank line
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)} ({','.join(header)})")
        v = {h: x.strip() for h, x in zip(header, row)}
        for c in ("image", "landmark"):
            if not v[c]:
                raise ValueError(f"{where}: empty {c!r}; every row needs an image and its landmark")
        role, label = v.get("role", "").lower(), v.get("label", "").lower()
        if role not in ("",) + ROLES:
            raise ValueError(f"{where}: unknown role {v['role']!r}; expected one of {', '.join(ROLES)} (or empty)")
        if label not in ("",) + LABELS:
            raise ValueError(f"{where}: unknown label {v['label']!r}; expected one of {', '.join(LABELS)} (or empty)")
        if role == "query" and label:
            raise ValueError(f"{where}: label {label!r} on a query; labels are for db (or train) images")
        box = None
        if any(v.get(c) for c in BOX):
            try:
                box = tuple(float(v[c]) for c in BOX)
            except ValueError:
                box = None
            if box is None or not all(map(math.isfinite, box)):
                raise ValueError(f"{where}: box {[v[c] for c in BOX]}; expected four numbers x1,y1,x2,y2 (pixels)")
            if role != "query":
                raise ValueError(f"{where}: a box is a query's region; this row's role is {role or 'empty'!r}, "
                                 "expected 'query'")
        image = Path(v["image"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image not found: {image}")
        key = image.resolve()
        if key in seen:
            raise ValueError(f"{where}: {image} is listed twice (also on line {seen[key]})")
        seen[key] = line
        photos.append(Photo(image, v["landmark"], role, label, box, where))
    if not photos:
        raise ValueError(f"{path}: no rows after the header")
    return photos


def read_collection(src: Path) -> tuple[str, list[Photo], list[str]]:
    """``(layout, photos, skipped)`` of ``src``: ``"folders"`` (a folder, :func:`read_folders`) or ``"csv"``
    (a file, :func:`read_csv`); image names checked unique (:func:`check_unique_names`)."""
    if src.is_dir():
        layout, (photos, skipped) = "folders", read_folders(src)
    elif src.is_file():
        layout, photos, skipped = "csv", read_csv(src), []
    else:
        raise FileNotFoundError(f"{src}: not found; expected a folder of landmark folders or a CSV file")
    check_unique_names(photos)
    return layout, photos, skipped


def check_unique_names(photos: list[Photo]) -> None:
    """ValueError naming both files when two images share a name (file name without extension, any case)."""
    first = {}
    for p in photos:
        other = first.setdefault(p.name.casefold(), p)
        if other is not p:
            raise ValueError(f"duplicate image name {p.name!r}: {other.where} ({other.landmark}) and {p.where} "
                             f"({p.landmark}); expected names unique across the collection (rename one)")


def landmark_count(value, n: int, what: str) -> int:
    """How many of ``n`` eligible landmarks ``value`` asks for (rule 4)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: expected 0, a fraction in (0, 1) or a whole count >= 1, got {value!r}")
    if value == 0:
        return 0
    if value < 1:
        k = max(1, math.floor(value * n + 0.5))
    elif float(value).is_integer():
        k = int(value)
    else:
        raise ValueError(f"{what}={value}: a count must be a whole number (or a fraction below 1)")
    if n == 0 or k > n:
        raise ValueError(f"{what}={value} asks for {k} landmark(s) but only {n} are eligible")
    return k


def pick(items: list, k: int, seed: int, *about) -> list:
    """``k`` of ``items`` drawn from ``seed`` and ``about``, in their order."""
    if k >= len(items):
        return list(items)
    rng = np.random.default_rng(seed_ints(seed, "import", *about))
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False).tolist())]


def plan_import(photos: list[Photo], queries_per_landmark: int = 2, val_landmarks: float = 0,
                train_landmarks: float = 0, seed: int = 0) -> dict:
    """Who goes where (the module's rules 1-4): ``{"train", "val", "test", "distractors"}`` landmark names,
    ``queries`` and ``db`` per landmark (lists of :class:`Photo`), ``photos`` per landmark. Raises ValueError
    naming the landmark where the input cannot make a benchmark."""
    if isinstance(queries_per_landmark, bool) or not isinstance(queries_per_landmark, (int, np.integer)) \
            or queries_per_landmark < 1:
        raise ValueError(f"queries_per_landmark: expected an integer >= 1, got {queries_per_landmark!r}")
    by_lm: dict[str, list[Photo]] = {}
    for p in sorted(photos, key=lambda p: (p.landmark, p.name.casefold(), p.name)):
        by_lm.setdefault(p.landmark, []).append(p)
    train = []
    for lm, rows in by_lm.items():
        roles = {p.role for p in rows}
        if "train" in roles:
            if roles != {"train"}:
                odd = next(p for p in rows if p.role != "train")
                raise ValueError(f"{odd.where}: landmark {lm!r} has role=train rows and a {odd.role or 'empty'!r} "
                                 "one; expected every row of a training landmark to be role=train (a landmark is "
                                 "either in the benchmark or in the training split)")
            train.append(lm)
    eligible = [lm for lm, rows in by_lm.items()
                if lm not in train and len(rows) >= 2 and not any(p.role for p in rows)]
    k_train = landmark_count(train_landmarks, len(eligible), "train_landmarks")
    train = sorted(train + pick(eligible, k_train, seed, "train"))
    queries, db = {}, {}
    for lm, rows in by_lm.items():
        if lm in train:
            continue
        q = [p for p in rows if p.role == "query"]
        if not q:
            auto = [p for p in rows if not p.role and not p.label]
            q = pick(auto, min(int(queries_per_landmark), len(rows) // 2, len(auto)), seed, "queries", lm)
        queries[lm], db[lm] = q, [p for p in rows if p not in q]
        if q and not any(p.label in ("", "easy", "hard") for p in db[lm]):
            raise ValueError(f"{q[0].where}: landmark {lm!r} has {len(q)} quer{'y' if len(q) == 1 else 'ies'} but no "
                             "easy or hard db image; expected at least one positive per query")
    with_queries = [lm for lm in queries if queries[lm]]
    val = pick(with_queries, landmark_count(val_landmarks, len(with_queries), "val_landmarks"), seed, "val")
    test = [lm for lm in with_queries if lm not in val]
    if not test:
        raise ValueError(f"no landmark with queries is left for the test set ({len(with_queries)} have queries, "
                         f"{len(val)} go to validation); expected at least one: a landmark needs 2 images (or a "
                         "role=query row and a db image)")
    return dict(train=train, val=val, test=test, distractors=[lm for lm in queries if not queries[lm]],
                queries=queries, db=db, photos=by_lm)

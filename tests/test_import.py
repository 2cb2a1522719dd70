"""Your own photos (retrieval.datasets.importer / collection): a collection the test draws, in both layouts
(landmark folders; a CSV with roles, labels and boxes), imported and checked field by field against what the
input implies; evaluation on it with known APs; every bad input refused with the file named and nothing left
behind; byte-identical re-imports; the name reaching get_test / train_name / Run; and a smoke run of the
notebooks 01 -> 02 -> 03 -> 08 on an imported set."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import retrieval.datasets.importer as importer
import retrieval.run.store as store
from retrieval.config import ROOT
from retrieval.datasets import (cid2filename, get_test, import_collection, imported_names, load_revisited, load_sfm,
                                resolve_name, train_name)
from retrieval.datasets.__main__ import main as datasets_cli
from retrieval.datasets.download import RESOURCES
from retrieval.metrics import evaluate
from retrieval.run import Run
from retrieval.run.__main__ import main as run_cli

COLOURS = [(200, 40, 40), (40, 160, 40), (40, 60, 200), (210, 180, 30), (150, 40, 170), (30, 170, 170),
           (120, 80, 20), (90, 90, 90), (230, 120, 160), (20, 20, 90), (160, 200, 90), (250, 150, 40),
           (60, 120, 60), (170, 110, 230), (10, 90, 130), (200, 200, 200), (120, 20, 60), (90, 200, 250)]


def draw(path: Path, landmark: int, view: int, size=(80, 60), fmt=None, exif=None) -> Path:
    """A photo of landmark ``landmark``: its own colour and shape, moved and scaled a little per ``view``."""
    rng = np.random.default_rng([landmark, view])
    w, h = size
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(180, 255, 3)))
    d = ImageDraw.Draw(im)
    c = COLOURS[landmark % len(COLOURS)]
    x, y, s = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4)), int(rng.integers(h // 2, 3 * h // 4))
    (d.ellipse if landmark % 3 == 0 else d.rectangle if landmark % 3 == 1 else d.pieslice)(
        *([[x, y, x + s, y + s]] + ([0, 270] if landmark % 3 == 2 else [])), fill=c)
    d.line([0, h - 1 - view % h, w, view % h], fill=COLOURS[(landmark + 5) % len(COLOURS)], width=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **({"exif": exif} if exif is not None else {}))
    return path


def folder_collection(base: Path) -> Path:
    """arch (5 images: 2 queries), bridge (4: 2), church (3: 1), dome (2: 1), lone (1: a distractor); mixed
    formats and cases; a README that is not an image."""
    src = base / "photos"
    sizes = {"arch": 5, "bridge": 4, "church": 3, "dome": 2, "lone": 1}
    for l, (lm, n) in enumerate(sizes.items()):
        for v in range(n):
            ext = ["jpg", "png", "JPEG", "webp", "jpg"][v]
            draw(src / lm / f"{lm}_{v}.{ext}", l, v, fmt={"JPEG": "JPEG", "jpg": "JPEG"}.get(ext))
    (src / "README.txt").write_text("my photos")
    return src


def write_csv(path: Path, rows: list[dict], header=("image", "landmark", "role", "label", "x1", "y1", "x2", "y2")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(k, "") for k in header])
    return path


def csv_collection(base: Path) -> tuple[Path, list[dict]]:
    """A CSV: tower (a query with a box; db images easy, hard, junk and one unlabelled), gate (4 images, no roles:
    2 queries drawn), a training landmark yard (3 images, one junk) and a distractor shed (one db row)."""
    img = base / "imgs"
    rows = [dict(image="imgs/tower_q.jpg", landmark="tower", role="query", x1=10, y1=5, x2=70, y2=55),
            dict(image="imgs/tower_e.jpg", landmark="tower", role="db", label="easy"),
            dict(image="imgs/tower_h.jpg", landmark="tower", role="db", label="hard"),
            dict(image="imgs/tower_j.jpg", landmark="tower", label="junk"),
            dict(image="imgs/tower_u.jpg", landmark="tower", role="db"),
            *[dict(image=f"imgs/gate_{v}.png", landmark="gate") for v in range(4)],
            *[dict(image=str(img / f"yard_{v}.jpg"), landmark="yard", role="train", label="junk" if v == 2 else "")
              for v in range(3)],  # absolute paths are accepted too
            dict(image="imgs/shed_0.jpg", landmark="shed", role="db")]
    for i, r in enumerate(rows):
        lm = ["tower", "gate", "yard", "shed"].index(r["landmark"])
        draw(base / r["image"], lm, i)
    return write_csv(base / "list.csv", rows), rows


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load_pickle(path: Path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


# ------------------------------------------------------------------ the two layouts, field by field
def test_folder_import_writes_the_revisited_format_with_the_rules_of_the_docstring(tmp_path, monkeypatch):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    summary = import_collection(src, "mine", root, progress=False)
    cfg = load_pickle(root / "test" / "mine" / "gnd_mine.pkl")
    assert set(cfg) == {"imlist", "qimlist", "gnd"}
    landmark = {p.stem: p.parent.name for p in src.rglob("*") if p.parent != src}  # what the folders say
    assert sorted(cfg["imlist"] + cfg["qimlist"]) == sorted(landmark) and not set(cfg["imlist"]) & set(cfg["qimlist"])
    per_lm = {lm: sum(landmark[q] == lm for q in cfg["qimlist"]) for lm in set(landmark.values())}
    assert per_lm == {"arch": 2, "bridge": 2, "church": 1, "dome": 1, "lone": 0}  # min(2, n // 2); lone: distractor
    assert cfg["qimlist"] == sorted(cfg["qimlist"], key=lambda q: (landmark[q], q))  # queries in landmark order
    assert [landmark[i] for i in cfg["imlist"]] != sorted(landmark[i] for i in cfg["imlist"])  # db order: permuted
    for q, g in zip(cfg["qimlist"], cfg["gnd"]):
        assert set(g) == {"bbx", "easy", "hard", "junk"} and g["hard"] == [] and g["junk"] == []
        assert g["easy"] == [i for i, im in enumerate(cfg["imlist"]) if landmark[im] == landmark[q]]
        with Image.open(next(src.glob(f"*/{q}.*"))) as im:
            assert g["bbx"] == [0.0, 0.0, float(im.width), float(im.height)]  # no box: the whole image
    lone = cfg["imlist"].index("lone_0")
    assert not any(lone in g["easy"] for g in cfg["gnd"])
    # the images: JPEGs byte for byte, other formats decoded and stored as JPEG (q95, 4:4:4): the same picture
    jpg = root / "test" / "mine" / "jpg"
    for name, lm in landmark.items():
        source = next(src.glob(f"{lm}/{name}.*"))
        stored = jpg / f"{name}.jpg"
        if source.suffix.lower() in (".jpg", ".jpeg"):
            assert stored.read_bytes() == source.read_bytes()
        else:
            with Image.open(stored) as a, Image.open(source) as b:
                assert a.format == "JPEG" and a.size == b.size
                assert np.abs(np.asarray(a, float) - np.asarray(b.convert("RGB"), float)).mean() < 2
    lms = json.loads((root / "test" / "mine" / "landmarks.json").read_text())
    assert lms["query"] == [landmark[q] for q in cfg["qimlist"]] and lms["db"] == [landmark[i] for i in cfg["imlist"]]
    assert lms["db_label"][lone] is None
    assert {label for i, label in enumerate(lms["db_label"]) if i != lone} == {"easy"}
    # nothing else was made; the summary says the same
    assert {p.name for p in (root / "test").iterdir()} == {"mine"} and not (root / "train").exists()
    assert summary["paths"] == {"test": root / "test" / "mine", "val": None, "train": None}
    assert summary["test"]["queries"] == 6 and summary["test"]["db"] == 9 and summary["test"]["query_landmarks"] == 4
    assert summary["test"]["positives"] == {"mean": (3 * 2 + 2 * 2 + 2 + 1) / 6, "min": 1, "max": 3}
    assert summary["val"] is None and summary["train"] is None and summary["skipped"] == [str(src / "README.txt")]
    text = importer.format_summary(summary)
    assert "6 queries of 4 landmarks, 9 db images" in text and "Hard mAP is undefined" in text
    # the name resolves like any test set
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(root))
    assert resolve_name("mine") == "mine" and imported_names() == ["mine"]
    ds = get_test("mine")
    assert (ds.imlist, ds.qimlist, ds.gnd) == (cfg["imlist"], cfg["qimlist"], cfg["gnd"])
    assert all(p.is_file() for p in ds.db_paths() + ds.query_paths())


def test_csv_import_follows_roles_labels_and_boxes(tmp_path, monkeypatch):
    path, rows = csv_collection(tmp_path)
    root = tmp_path / "data"
    summary = import_collection(path, "tour", root, progress=False)
    ds = load_revisited(root, "tour")
    # tower: its one query (with its box), easy = the easy and the unlabelled db image, hard, junk as labelled
    # gate: no roles, 4 images -> 2 queries drawn, the other 2 easy; shed: a distractor; yard: training only
    assert [q for q in ds.qimlist if not q.startswith("gate_")] == ["tower_q"]
    assert sum(q.startswith("gate_") for q in ds.qimlist) == 2
    assert sorted(ds.imlist) == sorted({"tower_e", "tower_h", "tower_j", "tower_u", "shed_0"}
                                       | {f"gate_{v}" for v in range(4)} - set(ds.qimlist))
    g = ds.gnd[ds.qimlist.index("tower_q")]
    idx = ds.imlist.index
    assert g == {"bbx": [10.0, 5.0, 70.0, 55.0], "easy": sorted([idx("tower_e"), idx("tower_u")]),
                 "hard": [idx("tower_h")], "junk": [idx("tower_j")]}
    for q in (q for q in ds.qimlist if q.startswith("gate_")):
        gq = ds.gnd[ds.qimlist.index(q)]
        assert gq["easy"] == sorted(idx(i) for i in ds.imlist if i.startswith("gate_"))
        assert gq["hard"] == gq["junk"] == []
    assert not any(s.startswith("yard") for s in ds.imlist + ds.qimlist)
    # the training split, field by field: cids = md5("<landmark>/<name>"), one cluster, pairs of the non-junk images
    sfm = load_pickle(root / "train" / "tour" / "tour.pkl")
    assert list(sfm) == ["train"]  # no validation landmarks: no val split
    names = ["yard_0", "yard_1", "yard_2"]
    cids = [hashlib.md5(f"yard/{n}".encode()).hexdigest() for n in names]
    assert sfm["train"] == {"cids": cids, "cluster": [0, 0, 0], "qidxs": [0, 1], "pidxs": [1, 0], "labels": [0, 0, 0]}
    for cid, n in zip(cids, names):
        stored = Path(cid2filename(cid, root / "train" / "tour" / "ims"))
        assert stored.read_bytes() == (tmp_path / "imgs" / f"{n}.jpg").read_bytes()
    assert load_sfm(root, "tour")["train"]["qidxs"] == [0, 1]
    assert summary["train"] == {"images": 3, "landmarks": 1, "pairs": 2, "val_images": 0}
    assert summary["test"]["hard"] == {"mean": 1 / 3, "min": 0, "max": 1}
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(root))
    assert train_name("tour") == "tour" and Run(tmp_path / "run").train_splits("tour")["train"]["cids"] == cids


def test_exif_rotation_is_applied_and_boxes_are_in_the_upright_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: a viewer rotates the 80x60 pixels to 60x80
    draw(tmp_path / "imgs" / "turned.jpg", 0, 0, fmt="JPEG", exif=exif)
    draw(tmp_path / "imgs" / "other.jpg", 0, 1, fmt="JPEG")
    rows = [dict(image="imgs/turned.jpg", landmark="a", role="query", x1=0, y1=0, x2=60, y2=80),
            dict(image="imgs/other.jpg", landmark="a", role="db")]
    import_collection(write_csv(tmp_path / "l.csv", rows), "turned", tmp_path / "data", progress=False)
    ds = load_revisited(tmp_path / "data", "turned")
    with Image.open(ds.query_paths()[0]) as stored, Image.open(tmp_path / "imgs" / "turned.jpg") as raw:
        assert stored.size == (60, 80) and ds.gnd[0]["bbx"] == [0.0, 0.0, 60.0, 80.0]
        upright = np.asarray(raw.transpose(Image.Transpose.ROTATE_270), float)  # 90 degrees clockwise
        assert np.abs(np.asarray(stored, float) - upright).mean() < 4
    rows[0].update(x2=80, y2=60)  # the box of the raw, unrotated pixels is outside the upright image
    with pytest.raises(ValueError, match=r"l2\.csv:2: box .* not inside the 60x80 image"):
        import_collection(write_csv(tmp_path / "l2.csv", rows), "turned2", tmp_path / "data", progress=False)


def test_validation_and_training_landmarks_are_held_out_disjointly(tmp_path, monkeypatch):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    for v in range(3):  # two more landmarks with 3 images each
        draw(src / "fort" / f"fort_{v}.jpg", 6, v)
        draw(src / "gardens" / f"gardens_{v}.jpg", 7, v)
    # eligible for training: the 6 landmarks with >= 2 images; 0.34 of 6 -> 2 (rounded half up); validation:
    # 1 of the 4 left with queries (a count)
    summary = import_collection(src, "held", root, val_landmarks=1, train_landmarks=0.34, progress=False)
    test, val = load_revisited(root, "held"), load_revisited(root, "held-val")
    lm = lambda ds: set(json.loads((ds.root / "landmarks.json").read_text())["query"])  # noqa: E731
    sfm = load_pickle(root / "train" / "held" / "held.pkl")
    manifest = json.loads((root / "train" / "held" / "manifest.json").read_text())
    train_lms = {manifest["landmarks"][c] for c in sfm["train"]["cluster"]}
    assert len(train_lms) == 2 and len(lm(val)) == 1 and len(lm(test)) == 3
    assert lm(test) | lm(val) | train_lms == {"arch", "bridge", "church", "dome", "fort", "gardens"}
    assert not (lm(test) & lm(val) or lm(test) & train_lms or lm(val) & train_lms)
    assert "lone_0" in test.imlist and "lone_0" not in val.imlist  # the distractor stays in the test db
    # the training split's val: the validation landmarks' images (queries and db), labelled by landmark
    assert {manifest["landmarks"][c] for c in sfm["val"]["cluster"]} == lm(val)
    assert len(sfm["val"]["cids"]) == val.n_query + val.n_db == summary["train"]["val_images"]
    assert all(sfm["train"]["cluster"][q] == sfm["train"]["cluster"][p] and q != p
               for q, p in zip(sfm["train"]["qidxs"], sfm["train"]["pidxs"]))
    n_train = len(sfm["train"]["cids"])
    assert len(sfm["train"]["qidxs"]) == sum(k * (k - 1) for k in np.bincount(sfm["train"]["cluster"])) \
        and n_train == summary["train"]["images"]
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(root))
    assert train_name("held") == train_name("held-val") == "held"  # the validation benchmark shares it
    run = Run(tmp_path / "run")
    assert run.test_set("held-val").qimlist == val.qimlist and run.train_name("held-val") == "held"
    assert imported_names() == ["held", "held-val"]
    # another seed draws other queries and landmarks (what is held out is the seed's choice, not the disk's)
    import_collection(src, "held2", root, val_landmarks=1, train_landmarks=0.34, seed=3, progress=False)
    assert (load_revisited(root, "held2").qimlist, load_revisited(root, "held2-val").qimlist) != (test.qimlist,
                                                                                                   val.qimlist)


def test_pairs_per_landmark_caps_the_training_pairs(tmp_path):
    src = tmp_path / "p"
    for v in range(6):
        draw(src / "big" / f"big_{v}.jpg", 0, v)
    for v in range(2):
        draw(src / "small" / f"small_{v}.jpg", 1, v)
    import_collection(src, "cap", tmp_path / "data", train_landmarks=1, pairs_per_landmark=7, progress=False)
    sfm = load_pickle(tmp_path / "data" / "train" / "cap" / "cap.pkl")["train"]
    pairs = list(zip(sfm["qidxs"], sfm["pidxs"]))
    assert len(pairs) == 7 and len(set(pairs)) == 7 and sfm["cluster"] == [0] * 6  # 30 possible, 7 drawn
    assert all(a != b for a, b in pairs)


# ------------------------------------------------------------------ evaluation with known AP
def test_ranking_on_an_import_gives_the_hand_computed_ap(tmp_path):
    path, _ = csv_collection(tmp_path)
    import_collection(path, "tour", tmp_path / "data", progress=False)
    ds = load_revisited(tmp_path / "data", "tour")
    # positives (easy, then hard) first, then the rest: AP 1 for every query under every protocol it has
    ranks = np.stack([np.array(g["easy"] + g["hard"] + [i for i in range(ds.n_db) if i not in g["easy"] + g["hard"]])
                      for g in ds.gnd], 1)
    res = evaluate(ranks, ds.gnd)
    assert res["easy"]["map"] == res["medium"]["map"] == res["hard"]["map"] == 1.0  # hard: tower's query only
    # tower's query: ranking [neg, easy1, junk, hard, neg, easy2, negs...]
    q = ds.qimlist.index("tower_q")
    g = ds.gnd[q]
    neg = [i for i in range(ds.n_db) if i not in g["easy"] + g["hard"] + g["junk"]]
    order = [neg[0], g["easy"][0], g["junk"][0], g["hard"][0], neg[1], g["easy"][1]] + neg[2:]
    one = evaluate(np.array(order)[:, None], [g])
    # by hand (trapezoid AP, junk removed): medium positives at 1, 2, 4 of 3: 1/12 + 7/36 + 11/60 = 83/180;
    # easy (hard counts as junk) at 1, 3 of 2: 1/8 + 5/24 = 1/3; hard (easy as junk) at 1 of 1: 1/4
    assert one["medium"]["map"] == pytest.approx(83 / 180, abs=1e-12)
    assert one["easy"]["map"] == pytest.approx(1 / 3, abs=1e-12)
    assert one["hard"]["map"] == pytest.approx(1 / 4, abs=1e-12)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_reimport_gives_identical_bytes(tmp_path, layout):
    src = folder_collection(tmp_path) if layout == "folders" else csv_collection(tmp_path)[0]
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(val_landmarks=1, train_landmarks=1 if layout == "folders" else 0, progress=False)
    import_collection(src, "same", a, **kw)
    first = tree(a)
    import_collection(src, "same", b, **kw)
    assert tree(b) == first and len(first) > 10
    import_collection(src, "same", a, overwrite=True, **kw)  # in place, over itself
    assert tree(a) == first


# ------------------------------------------------------------------ bad input: named, expected, nothing left
def _bad_unreadable(base):
    src = folder_collection(base)
    (src / "dome" / "dome_9.jpg").write_bytes(b"this is not a JPEG")
    return src, src / "dome" / "dome_9.jpg", "expected a complete image file"


def _bad_truncated(base):
    src = folder_collection(base)
    data = (src / "arch" / "arch_0.jpg").read_bytes()
    draw(src / "arch" / "arch_9.jpg", 0, 9, size=(400, 300), fmt="JPEG")
    full = (src / "arch" / "arch_9.jpg").read_bytes()
    (src / "arch" / "arch_9.jpg").write_bytes(full[:len(full) // 2])
    assert data  # the other images are fine (some are written before this one fails)
    return src, src / "arch" / "arch_9.jpg", "truncated"


def _bad_duplicate(base):
    src = folder_collection(base)
    draw(src / "bridge" / "arch_1.png", 1, 7)  # arch/arch_1.png exists
    return src, src / "arch" / "arch_1.png", r"duplicate image name 'arch_1'.*expected names unique"


def _bad_empty_folder(base):
    src = folder_collection(base)
    (src / "empty").mkdir()
    (src / "empty" / "notes.txt").write_text("x")
    return src, src / "empty", "empty landmark folder, no image files"


def _bad_image_at_top(base):
    src = folder_collection(base)
    draw(src / "stray.jpg", 0, 0)
    return src, src / "stray.jpg", "expected one sub-folder per landmark"


def _bad_box(base):
    path, rows = csv_collection(base)
    rows[0].update(x2=81)  # the image is 80 px wide
    return write_csv(path, rows), f"{path}:2", r"box \[10.0, 5.0, 81.0, 55.0\] is not inside the 80x60 image"


def _bad_missing_column(base):
    path, rows = csv_collection(base)
    return write_csv(path, rows, ("image", "role")), f"{path}:1", r"missing column\(s\) \['landmark'\]"


def _bad_unknown_column(base):
    path, rows = csv_collection(base)
    return write_csv(path, rows, ("image", "landmark", "rol")), f"{path}:1", r"unknown column\(s\) \['rol'\]"


def _bad_partial_box(base):
    path, rows = csv_collection(base)
    return write_csv(path, rows, ("image", "landmark", "role", "x1", "y1")), f"{path}:1", "expected all of x1,y1,x2,y2"


def _bad_role(base):
    path, rows = csv_collection(base)
    rows[3]["role"] = "database"
    return write_csv(path, rows), f"{path}:5", "unknown role 'database'; expected one of query, db, train"


def _bad_label(base):
    path, rows = csv_collection(base)
    rows[1]["label"] = "medium"
    return write_csv(path, rows), f"{path}:3", "unknown label 'medium'; expected one of easy, hard, junk"


def _bad_empty_value(base):
    path, rows = csv_collection(base)
    rows[2]["landmark"] = ""
    return write_csv(path, rows), f"{path}:4", "empty 'landmark'"


def _bad_short_row(base):
    path, _ = csv_collection(base)
    with open(path, "a") as fh:
        fh.write("imgs/gate_0.png,gate\n")
    return path, f"{path}:15", "2 fields, the header has 8"


def _bad_missing_image(base):
    path, rows = csv_collection(base)
    rows.append(dict(image="imgs/nowhere.jpg", landmark="gate"))
    return write_csv(path, rows), f"{path}:15", "image not found"


def _bad_box_on_db(base):
    path, rows = csv_collection(base)
    rows[1].update(x1=0, y1=0, x2=10, y2=10)
    return write_csv(path, rows), f"{path}:3", "a box is a query's region"


def _bad_mixed_train(base):
    path, rows = csv_collection(base)
    rows.append(dict(image="imgs/yard_q.jpg", landmark="yard", role="query"))
    draw(base / "imgs" / "yard_q.jpg", 2, 9)
    return write_csv(path, rows), f"{path}:15", "landmark 'yard' has role=train rows and a 'query' one"


def _bad_not_text(base):
    path = base / "photos.csv"
    path.write_bytes(b"\xff\xfe\x00image,landmark\n\x9c\x80")
    return path, str(path), "cannot read it as CSV text"


BAD = {"not a CSV": _bad_not_text, "unreadable image": _bad_unreadable, "truncated image": _bad_truncated, "duplicate name": _bad_duplicate,
       "empty landmark folder": _bad_empty_folder, "image outside a landmark folder": _bad_image_at_top,
       "box outside its image": _bad_box, "missing column": _bad_missing_column,
       "unknown column": _bad_unknown_column, "partial box columns": _bad_partial_box, "unknown role": _bad_role,
       "unknown label": _bad_label, "empty value": _bad_empty_value, "short row": _bad_short_row,
       "missing image": _bad_missing_image, "box on a db row": _bad_box_on_db,
       "mixed training landmark": _bad_mixed_train}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, case):
    src, where, expected = BAD[case](tmp_path)
    root = tmp_path / "data"
    (root / "test" / "keep").mkdir(parents=True)  # someone else's files stay as they are
    (root / "test" / "keep" / "f").write_text("x")
    before = tree(root) | {str(p.relative_to(root)): "dir" for p in root.rglob("*") if p.is_dir()}
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        import_collection(src, "bad", root, val_landmarks=0, progress=False)
    assert str(where) in str(e.value) or str(where) in str(e.value.__cause__ or "")
    assert __import__("re").search(expected, str(e.value)), str(e.value)
    assert tree(root) | {str(p.relative_to(root)): "dir" for p in root.rglob("*") if p.is_dir()} == before


def test_a_failed_import_into_a_new_data_folder_leaves_no_folder(tmp_path):
    src, _, _ = _bad_truncated(tmp_path)
    with pytest.raises(ValueError, match="arch_9.jpg"):
        import_collection(src, "bad", tmp_path / "new" / "data", progress=False)
    assert not (tmp_path / "new" / "data").exists()


@pytest.mark.parametrize("name", ["synth", "synth-mine", "Synthetic", "roxford5k", "paris6k", "revisitop1m",
                                  "retrieval-SfM-120k", "gldv2", "mine-val", "../mine", "a+b", "", "a/b", ".hidden"])
def test_reserved_or_odd_names_are_refused(tmp_path, name):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    with pytest.raises(ValueError, match="name"):
        import_collection(src, name, root, progress=False)
    assert not root.exists()


def test_every_downloaded_dataset_name_is_reserved():
    for r in RESOURCES.values():
        if any(f.dest.startswith(("test/", "train/")) for f in r.files):
            for n in (r.name, *r.aliases):
                with pytest.raises(ValueError, match="real dataset"):
                    importer.check_name(n)


def test_an_existing_name_is_refused_unless_overwrite_and_a_failed_swap_restores_it(tmp_path, monkeypatch):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    import_collection(src, "mine", root, val_landmarks=1, progress=False)
    first = tree(root)
    with pytest.raises(FileExistsError, match=r"name 'mine' exists already .*--overwrite"):
        import_collection(src, "mine", root, progress=False)
    assert tree(root) == first
    # overwrite with bad input: the old import stays
    (src / "dome" / "dome_9.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="dome_9.jpg"):
        import_collection(src, "mine", root, overwrite=True, progress=False)
    assert tree(root) == first
    (src / "dome" / "dome_9.jpg").unlink()
    # a rename that fails half-way (disk trouble): what was placed is removed, the old import put back
    real = os.rename

    def flaky(a, b):
        if Path(b) == root / "train" / "mine":  # after the test set was placed
            raise OSError(28, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(importer.os, "rename", flaky)
    with pytest.raises(OSError, match="No space"):
        import_collection(src, "mine", root, overwrite=True, train_landmarks=1, progress=False)
    monkeypatch.setattr(importer.os, "rename", real)
    assert tree(root) == first and sorted(p.name for p in root.iterdir()) == ["test"]  # no staging, no empty train/
    # overwrite without validation landmarks: the old mine-val goes too
    import_collection(src, "mine", root, overwrite=True, progress=False)
    assert sorted(p.name for p in (root / "test").iterdir()) == ["mine"]


def test_counts_that_cannot_be_met_are_refused(tmp_path):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    for kw, msg in [(dict(val_landmarks=4), "no landmark with queries is left for the test set"),
                    (dict(val_landmarks=5), "val_landmarks=5 asks for 5 landmark.* only 4 are eligible"),
                    (dict(train_landmarks=1.5), "a count must be a whole number"),
                    (dict(train_landmarks=-1), "train_landmarks: expected 0, a fraction"),
                    (dict(queries_per_landmark=0), "queries_per_landmark: expected an integer >= 1")]:
        with pytest.raises(ValueError, match=msg):
            import_collection(src, "x", root, progress=False, **kw)
    assert not root.exists()


# ------------------------------------------------------------------ the name everywhere a dataset is named
def test_unknown_dataset_lists_what_exists_and_a_missing_training_split_is_explained(tmp_path, monkeypatch):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    import_collection(src, "mine", root, val_landmarks=1, progress=False)
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(root))
    with pytest.raises(ValueError) as e:
        get_test("mien")
    for part in ("'mien'", "'synth'", "roxford5k", "mine, mine-val", str(root / "test"), "retrieval.datasets import"):
        assert part in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"mine has no training split .*--train-landmarks"):
        Run(tmp_path / "run").train_splits("mine")
    with pytest.raises(ValueError, match="rendered distractors go with a synthetic test set, not mine"):
        get_test("mine", distractors="synth-10")
    assert resolve_name("roxford5k") == "roxford5k" and resolve_name("synth-custom") == "synth-custom"


def test_cli_prints_what_it_made_and_errors_name_the_file(tmp_path, capsys):
    src, root = folder_collection(tmp_path), tmp_path / "data"
    assert datasets_cli(["import", str(src), "--name", "mine", "--root", str(root), "--val-landmarks", "1",
                         "--train-landmarks", "1", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    summary = import_collection(src, "again", root, val_landmarks=1, train_landmarks=1, seed=2, progress=False)
    assert f"imported mine from {src} (folders)" in out
    assert (f"{summary['test']['queries']} queries of {summary['test']['query_landmarks']} landmarks, "
            f"{summary['test']['db']} db images") in out
    assert f"{summary['train']['images']} images of 1 landmark, {summary['train']['pairs']} pairs" in out
    assert "positives per query" in out and str(root / "test" / "mine-val") in out
    assert datasets_cli(["import", str(src), "--name", "mine", "--root", str(root)]) == 1
    assert "exists already" in capsys.readouterr().err
    (src / "arch" / "x.jpg").write_bytes(b"")
    assert datasets_cli(["import", str(src), "--name", "other", "--root", str(root)]) == 1
    assert str(src / "arch" / "x.jpg") in capsys.readouterr().err and not (root / "test" / "other").exists()


# ------------------------------------------------------------------ the notebooks on an imported set
def smoke_collection(base: Path) -> Path:
    """Sized for 03's smoke parameters: 7 landmarks of 16 images with queries (4 held out for validation, so both
    db's exceed the selection grids' k of 50), 3 hard and 1 junk db image each, 6 distractors, and 6 training
    landmarks of 6 images (36 >= csa_K 32 + 1)."""
    rows = []
    for l in range(7):
        for v in range(16):
            label = "hard" if v < 3 else "junk" if v == 3 else ""
            rows.append(dict(image=f"i/b{l}_{v}.jpg", landmark=f"b{l}", label=label))
    rows += [dict(image=f"i/d{l}.jpg", landmark=f"d{l}") for l in range(6)]
    rows += [dict(image=f"i/t{l}_{v}.jpg", landmark=f"t{l}", role="train") for l in range(6) for v in range(6)]
    for r in rows:
        lm = int(r["landmark"][1:]) + {"b": 0, "d": 7, "t": 13}[r["landmark"][0]]
        view = int(Path(r["image"]).stem.split("_")[-1]) if "_" in r["image"] else 0
        draw(base / r["image"], lm, view, size=(64, 48), fmt="JPEG")
    return write_csv(base / "smoke.csv", rows, ("image", "landmark", "role", "label"))


@pytest.mark.slow
def test_notebooks_01_02_03_08_run_on_an_imported_set(tmp_path, kernel_env):
    """`run demo --only 01 02 03 08 -p dataset mine -p val_dataset mine-val` (smoke profile): 01 evaluates the
    off-the-shelf network, 02 fine-tunes on the import's training split and picks its whitening on mine-val, 03
    re-ranks with settings chosen on mine-val (the synthetic distractors of its defaults left out; CSA's smoke
    grid swept on mine-val), 08 draws the lists. Nothing synthetic is rendered."""
    data = tmp_path / "data"
    summary = import_collection(smoke_collection(tmp_path), "mine", data, val_landmarks=4, progress=False)
    assert (summary["test"]["db"], summary["val"]["db"], summary["train"]["images"]) == (3 * 14 + 6, 4 * 14, 36)
    kernel_env(data)
    run = tmp_path / "run"
    assert run_cli(["demo", "--profile", "smoke", "--run-dir", str(run), "--only", "01", "02", "03", "08",
                    "-p", "dataset", "mine", "-p", "val_dataset", "mine-val"]) == 0  # 03 drops the synthetic defaults
    metrics = store.load_metrics(run)
    assert list(metrics) == ["mine"]
    notebooks = {r["recorded"]["notebook"] for r in metrics["mine"].values()}
    assert notebooks == {"01_extract_features", "02_train_global", "03_rerank"}
    for row in metrics["mine"].values():
        assert 0 <= row["medium"]["map"] <= 1 and 0 <= row["hard"]["map"] <= 1  # hard positives: the CSV's labels
        if row["recorded"]["notebook"] == "03_rerank":  # per-query APs (intervals over the test landmarks)
            assert len(row["ap"]["medium"]) == summary["test"]["queries"] == 6
    first = json.loads(next((run / "selection").glob("gem-*.json")).read_text())
    assert set(first) >= {"aqe", "dba", "diffusion", "superglobal"}
    csa = json.loads(next((run / "selection").glob("csa-*.json")).read_text())  # smoke: its grid swept on mine-val
    assert csa["config"]["val"] == "mine-val" and len(csa["selection"]["sweep"]) >= 4
    assert {p.name for p in (run / "features").iterdir()} == {"mine", "mine-val"}
    assert (run / "figures" / "08_top10.png").is_file() and (run / "ranks" / "mine").is_dir()
    assert (run / "train_global" / "whitening_gem-efficientnet_lite0.json").is_file()
    assert not [p for p in (data / "test").iterdir() if p.name.startswith("synth")]

"""Tests for retrieval.datasets (synthetic generator, revisited / SfM formats, images) and retrieval.io."""
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval.datasets.synthetic as synthetic
from retrieval.datasets import (
    PRESETS, cid2filename, crop_bbx, dataset_name, generate, load_image, load_revisited, load_sfm,
    resize_longer, resolve_name, validate_gnd,
)
from retrieval.datasets.synthetic import label_view, make_config, render_view
from retrieval.io import (
    atomic_write_bytes, atomic_write_json, atomic_write_pickle, check_features, load_features,
    save_features,
)

CFG = PRESETS["tiny"]
NAME = "synth-tiny"
N_QUERY = CFG.n_landmarks * CFG.queries_per_landmark
N_DB = (CFG.n_landmarks * CFG.views_per_landmark
        + CFG.n_distractor_landmarks * CFG.views_per_distractor + CFG.n_background)
N_TRAIN = CFG.n_train_landmarks * CFG.views_per_train_landmark
N_VAL = CFG.n_val_landmarks * CFG.views_per_train_landmark


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as {relative path: bytes}."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _load_pickle(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _load_json(path):
    with open(path) as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_a")
    paths = generate("tiny", root=root, progress=False, workers=2)
    assert paths == {"test": root / "test" / NAME, "train": root / "train" / NAME, "val": root / "test" / f"{NAME}-val"}
    return root


@pytest.fixture(scope="module")
def test_dir(tiny_root) -> Path:
    return tiny_root / "test" / NAME


@pytest.fixture(scope="module")
def train_dir(tiny_root) -> Path:
    return tiny_root / "train" / NAME


@pytest.fixture(scope="module")
def gnd_pkl(test_dir):
    return _load_pickle(test_dir / f"gnd_{NAME}.pkl")


@pytest.fixture(scope="module")
def landmarks(test_dir):
    return _load_json(test_dir / "landmarks.json")


@pytest.fixture(scope="module")
def sfm_pkl(train_dir):
    return _load_pickle(train_dir / f"{NAME}.pkl")


# --------------------------------------------------------------------------- 1. test split format
def test_gnd_pickle_has_revisited_format(gnd_pkl):
    assert set(gnd_pkl) == {"imlist", "qimlist", "gnd"}
    imlist, qimlist, gnd = gnd_pkl["imlist"], gnd_pkl["qimlist"], gnd_pkl["gnd"]
    assert len(imlist) == N_DB and len(qimlist) == N_QUERY and len(gnd) == N_QUERY
    assert all(isinstance(s, str) for s in imlist + qimlist)
    assert len(set(imlist)) == N_DB and len(set(qimlist)) == N_QUERY
    assert not set(imlist) & set(qimlist)
    for i, g in enumerate(gnd):
        assert {"bbx", "easy", "hard", "junk"} <= set(g), i
        bbx = g["bbx"]
        assert len(bbx) == 4 and all(isinstance(v, float) for v in bbx)
        x1, y1, x2, y2 = bbx
        assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height, (i, bbx)
        sets = {}
        for k in ("easy", "hard", "junk"):
            assert all(isinstance(j, int) for j in g[k]), (i, k)
            assert all(0 <= j < N_DB for j in g[k]), (i, k)
            assert len(set(g[k])) == len(g[k]), (i, k)
            sets[k] = set(g[k])
        assert not sets["easy"] & sets["hard"] and not sets["easy"] & sets["junk"]
        assert not sets["hard"] & sets["junk"]
        # every query must have something to find, otherwise its AP is undefined
        assert sets["easy"] | sets["hard"], i


def test_listed_images_exist_and_decode_at_preset_size(test_dir, gnd_pkl):
    names = gnd_pkl["imlist"] + gnd_pkl["qimlist"]
    assert sorted(p.stem for p in (test_dir / "jpg").glob("*.jpg")) == sorted(names)
    for name in names:
        im = load_image(test_dir / "jpg" / f"{name}.jpg")
        assert im.size == (CFG.width, CFG.height), name
        assert im.mode == "RGB"


def test_load_revisited_round_trips(tiny_root, test_dir, gnd_pkl):
    ds = load_revisited(tiny_root, NAME)
    assert ds.name == NAME and ds.root == test_dir
    assert ds.imlist == gnd_pkl["imlist"] and ds.qimlist == gnd_pkl["qimlist"]
    assert ds.gnd == gnd_pkl["gnd"]
    assert ds.n_db == N_DB and ds.n_query == N_QUERY
    assert ds.db_paths() == [test_dir / "jpg" / f"{n}.jpg" for n in gnd_pkl["imlist"]]
    assert all(p.is_file() for p in ds.db_paths() + ds.query_paths())
    assert ds.bbxs() == [list(g["bbx"]) for g in gnd_pkl["gnd"]]


def test_positives_are_exactly_the_db_views_of_the_query_landmark(gnd_pkl, landmarks):
    db_keys, q_keys, db_label = landmarks["db"], landmarks["query"], landmarks["db_label"]
    assert len(db_keys) == N_DB and len(db_label) == N_DB and len(q_keys) == N_QUERY
    assert sorted(set(q_keys)) == [f"test{i:03d}" for i in range(CFG.n_landmarks)]
    n_background = sum(k is None for k in db_keys)
    assert n_background == CFG.n_background
    for qi, g in enumerate(gnd_pkl["gnd"]):
        key = q_keys[qi]
        same = {j for j, k in enumerate(db_keys) if k == key}
        assert len(same) == CFG.views_per_landmark
        listed = set(g["easy"]) | set(g["hard"]) | set(g["junk"])
        assert listed == same, qi  # never a distractor / background / other test landmark
        if landmarks["query_part"][qi] is None:  # a whole-landmark query: the views' own labels
            for k in ("easy", "hard", "junk"):
                assert all(db_label[j] == k for j in g[k]), (qi, k)
    # whole-landmark queries of the same landmark share their labels (part queries: tests/test_benchmark.py)
    by_key = {}
    for qi, key in enumerate(q_keys):
        if landmarks["query_part"][qi] is not None:
            continue
        g = gnd_pkl["gnd"][qi]
        lists = tuple(tuple(sorted(g[k])) for k in ("easy", "hard", "junk"))
        assert by_key.setdefault(key, lists) == lists, qi


def test_db_order_does_not_group_landmarks(landmarks):
    # the db is permuted: the first views are not all from one landmark
    keys = landmarks["db"]
    assert len(set(keys[:CFG.views_per_landmark])) > 1


def test_per_image_meta_agrees_with_landmarks_json(test_dir, gnd_pkl, landmarks):
    for i, name in enumerate(gnd_pkl["imlist"]):
        meta = _load_json(test_dir / "meta" / f"{name}.json")
        assert meta["landmark"] == landmarks["db"][i]
        assert meta["label"] == landmarks["db_label"][i]
    for i, name in enumerate(gnd_pkl["qimlist"]):
        meta = _load_json(test_dir / "meta" / f"{name}.json")
        assert meta["landmark"] == landmarks["query"][i] and meta["mode"] == "query"
        assert meta["bbx"] == gnd_pkl["gnd"][i]["bbx"]


def test_training_pickle_format(train_dir, sfm_pkl):
    assert set(sfm_pkl) == {"train", "val"}
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        d = sfm_pkl[split]
        assert {"cids", "cluster", "qidxs", "pidxs", "labels"} <= set(d)
        assert len(d["cids"]) == len(d["cluster"]) == len(d["labels"]) == n
        assert len(set(d["cids"])) == n
        assert d["labels"] == d["cluster"]
        assert len(d["qidxs"]) == len(d["pidxs"]) > 0
        n_lm = CFG.n_train_landmarks if split == "train" else CFG.n_val_landmarks
        assert len(set(d["cluster"])) == n_lm
        assert len(d["qidxs"]) <= n_lm * CFG.pairs_per_train_landmark
        for cid in d["cids"]:
            path = Path(cid2filename(cid, train_dir / "ims"))
            assert path.is_file(), cid
            assert path.parent == train_dir / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4]
        im = load_image(cid2filename(d["cids"][0], train_dir / "ims"))
        assert im.size == (CFG.width, CFG.height)


def test_training_pairs_match_same_landmark(train_dir, sfm_pkl):
    for split in ("train", "val"):
        d = sfm_pkl[split]
        metas = [_load_json(train_dir / "meta" / f"{cid}.json") for cid in d["cids"]]
        for q, p in zip(d["qidxs"], d["pidxs"]):
            assert q != p and d["cids"][q] != d["cids"][p]
            assert d["cluster"][q] == d["cluster"][p]
            assert metas[q]["landmark"] == metas[p]["landmark"]
            assert metas[q]["label"] != "junk" and metas[p]["label"] != "junk"
        assert len(set(zip(d["qidxs"], d["pidxs"]))) == len(d["qidxs"])  # no duplicate pairs
        # cluster id <-> landmark key is a bijection within the split
        pairs = {(c, m["landmark"]) for c, m in zip(d["cluster"], metas)}
        assert len(pairs) == len({c for c, _ in pairs}) == len({k for _, k in pairs})


def test_train_val_test_landmarks_are_disjoint(train_dir, sfm_pkl, landmarks):
    keys = {}
    for split in ("train", "val"):
        keys[split] = {_load_json(train_dir / "meta" / f"{cid}.json")["landmark"]
                       for cid in sfm_pkl[split]["cids"]}
        assert all(k.startswith(split) for k in keys[split]), split
    test_keys = {k for k in landmarks["db"] + landmarks["query"] if k is not None}
    assert keys["train"] and keys["val"] and test_keys
    assert not keys["train"] & keys["val"]
    assert not (keys["train"] | keys["val"]) & test_keys
    assert not set(sfm_pkl["train"]["cluster"]) & set(sfm_pkl["val"]["cluster"])


def test_load_sfm_round_trips(tiny_root, train_dir, sfm_pkl):
    db = load_sfm(tiny_root, NAME)
    for split in ("train", "val"):
        for k in ("cids", "cluster", "qidxs", "pidxs", "labels"):
            assert db[split][k] == sfm_pkl[split][k]
        assert db[split]["paths"] == [cid2filename(c, train_dir / "ims") for c in sfm_pkl[split]["cids"]]
        assert all(os.path.isfile(p) for p in db[split]["paths"])


# --------------------------------------------------------------------------- 2. determinism
def test_same_seed_is_byte_identical_across_roots_and_worker_counts(tmp_path, tiny_root):
    generate("tiny", root=tmp_path, progress=False, workers=1)
    a, b = _files(tiny_root), _files(tmp_path)
    assert sorted(a) == sorted(b)
    assert len(a) > 2 * (N_DB + N_QUERY + N_TRAIN + N_VAL)  # images + meta + pickles
    differing = [k for k in a if a[k] != b[k]]
    assert differing == []
    assert _load_pickle(tmp_path / "test" / NAME / f"gnd_{NAME}.pkl") == \
        _load_pickle(tiny_root / "test" / NAME / f"gnd_{NAME}.pkl")


def test_different_seed_gives_different_images(tmp_path, tiny_root):
    paths = generate("tiny", root=tmp_path, seed=1, progress=False, workers=2)
    assert paths["test"] == tmp_path / "test" / "synth-tiny-s1"
    ds0, ds1 = load_revisited(tiny_root, NAME), load_revisited(tmp_path, "synth-tiny-s1")
    assert ds1.imlist == ds0.imlist and ds1.qimlist == ds0.qimlist  # same layout names...
    for p0, p1 in zip(ds0.query_paths() + ds0.db_paths()[:10], ds1.query_paths() + ds1.db_paths()[:10]):
        assert p0.read_bytes() != p1.read_bytes(), p0.name  # ...different pictures


# --------------------------------------------------------------------------- 3. resume
def _count_renders(monkeypatch) -> list:
    """Patch the renderer to record the view id of every image rendered; returns that list."""
    calls = []
    real = synthetic.render_view

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_view", counting)
    return calls


def test_resume_rerenders_only_missing_images_identically(tmp_path, tiny_root, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    original = _files(root)
    test_d, train_d = root / "test" / NAME, root / "train" / NAME
    gone = [test_d / "jpg" / "q_00001.jpg", test_d / "jpg" / "db_00005.jpg", test_d / "jpg" / "db_00042.jpg"]
    gone_meta = [test_d / "meta" / f"{p.stem}.json" for p in gone]
    cids = _load_pickle(train_d / f"{NAME}.pkl")["train"]["cids"][:2]
    gone += [Path(cid2filename(c, train_d / "ims")) for c in cids]
    gone_meta += [train_d / "meta" / f"{c}.json" for c in cids]
    for p in gone + gone_meta + [test_d / "manifest.json", train_d / "manifest.json",
                                 test_d / f"gnd_{NAME}.pkl"]:
        p.unlink()

    calls = _count_renders(monkeypatch)
    generate("tiny", root=root, progress=False, workers=1)
    assert len(calls) == len(gone)  # the kept images were not rendered again
    assert _files(root) == original


def test_complete_dataset_is_not_rendered_again(tiny_root, monkeypatch):
    before = _files(tiny_root)

    def boom(*args, **kwargs):
        raise AssertionError("render_view called on a complete dataset")

    monkeypatch.setattr(synthetic, "render_view", boom)
    paths = generate("tiny", root=tiny_root, progress=False, workers=1)
    assert paths["test"] == tiny_root / "test" / NAME
    assert _files(tiny_root) == before


def test_changed_manifest_triggers_regeneration(tmp_path, tiny_root, monkeypatch):
    # the patched renderer is really used once the dataset is not complete
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    (root / "test" / NAME / "jpg" / "db_00000.jpg").unlink()
    manifest = root / "train" / NAME / "manifest.json"
    m = _load_json(manifest)
    m["format_version"] = -1
    manifest.write_text(json.dumps(m))

    def boom(*args, **kwargs):
        raise RuntimeError("rendering")

    monkeypatch.setattr(synthetic, "render_view", boom)
    with pytest.raises(RuntimeError, match="rendering"):
        generate("tiny", root=root, progress=False, workers=1)


def test_dataset_of_another_version_is_rendered_again_not_reused(tmp_path, tiny_root, monkeypatch):
    # images are kept on resume, so a complete set made by another generator version must be removed,
    # not mixed: every image is rendered again and the result equals a fresh generation
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    original = _files(root)
    for part in ("test", "train"):
        manifest = root / part / NAME / "manifest.json"
        m = _load_json(manifest)
        m["format_version"] = -1
        manifest.write_text(json.dumps(m))
    stale = root / "test" / NAME / "jpg" / "db_00003.jpg"
    stale.write_bytes(b"an image of the old generator")
    calls = _count_renders(monkeypatch)
    generate("tiny", root=root, progress=False, workers=1)
    assert len(calls) == len(list((root / "test" / NAME / "meta").glob("*.json"))) + \
        len(list((root / "train" / NAME / "meta").glob("*.json")))
    assert _files(root) == original
    assert not (root / "test" / NAME / "generating.json").exists()


# --------------------------------------------------------------------------- 4. labels
def _geo(visible=0.9, cover=0.3, yaw=0.0, photo=0.1):
    return dict(visible=visible, cover=cover, yaw=yaw, photo=photo)


@pytest.mark.parametrize("geo, label", [
    (_geo(), "easy"),
    (_geo(visible=0.6, cover=0.10, yaw=40.0, photo=0.49), "easy"),   # every easy bound inclusive
    (_geo(yaw=-40.0), "easy"),
    (_geo(visible=0.599), "hard"),
    (_geo(cover=0.0999), "hard"),
    (_geo(yaw=40.5), "hard"),
    (_geo(yaw=-41.0), "hard"),
    (_geo(photo=0.5), "hard"),
    (_geo(visible=0.2, cover=0.02), "hard"),                       # junk bounds exclusive
    (_geo(visible=0.1999), "junk"),
    (_geo(cover=0.0199), "junk"),
    (_geo(visible=0.1, cover=0.9), "junk"),                        # junk wins over a large cover
    (_geo(visible=1.0, cover=0.01, yaw=0.0, photo=0.0), "junk"),
    (_geo(visible=0.0, cover=0.0), "junk"),
])
def test_label_view_thresholds(geo, label):
    assert label_view(geo) == label


def test_meta_labels_follow_geometry(test_dir, train_dir):
    metas = [_load_json(p) for p in sorted((test_dir / "meta").glob("db_*.json"))]
    metas += [_load_json(p) for p in sorted((train_dir / "meta").glob("*.json"))]
    assert len(metas) == N_DB + N_TRAIN + N_VAL
    for m in metas:
        if m["landmark"] is None:
            assert m["label"] is None and m["visible"] == 0 and m["cover"] == 0 and m["bbx"] is None
        else:
            assert m["label"] == label_view(m), m["view"]
            assert 0.0 <= m["visible"] <= 1.0 and 0.0 <= m["cover"] <= 1.0
            assert (m["bbx"] is None) == (m["cover"] == 0), m["view"]
            if m["bbx"] is not None:  # the box lies in the image and holds every visible pixel
                x1, y1, x2, y2 = m["bbx"]
                assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height, m["view"]
                assert (x2 - x1) * (y2 - y1) >= m["cover"] * CFG.width * CFG.height - 1e-6


def test_easy_views_show_more_of_the_landmark_than_hard_than_junk(test_dir):
    metas = [_load_json(p) for p in (test_dir / "meta").glob("db_*.json")]
    mean = {}
    for lab in ("easy", "hard", "junk"):
        sel = [m for m in metas if m["label"] == lab]
        assert len(sel) >= 3, lab
        mean[lab] = {k: float(np.mean([m[k] for m in sel])) for k in ("visible", "cover")}
    for k in ("visible", "cover"):
        assert mean["easy"][k] > mean["hard"][k] > mean["junk"][k], (k, mean)


def test_render_view_background_has_no_landmark():
    img, geo = render_view(0, None, "background-test", "easy", CFG.width, CFG.height)
    assert img.size == (CFG.width, CFG.height) and img.mode == "RGB"
    assert geo["visible"] == 0 and geo["cover"] == 0 and geo["bbx"] is None


def test_render_view_close_up_box_is_clipped_to_the_frame(monkeypatch):
    real = synthetic._view_params

    def close_up(rng, mode, k):  # the landmark spans 3x the frame, no occluders
        p = real(rng, mode, k)
        p.update(span=3.0, pan=(0.0, 0.0), occ=0, yaw=0.0)
        return p

    monkeypatch.setattr(synthetic, "_view_params", close_up)
    full = [0.0, 0.0, float(CFG.width), float(CFG.height)]
    n_full = 0
    for key in ("test000", "test001", "test002", "train000", "train001", "val000"):
        _, geo = render_view(0, key, f"{key}-closeup", "easy", CFG.width, CFG.height)
        assert geo["cover"] > 0.3, key
        x1, y1, x2, y2 = geo["bbx"]
        assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height, (key, geo["bbx"])
        assert (x2 - x1) * (y2 - y1) >= geo["cover"] * CFG.width * CFG.height
        if geo["cover"] > 0.99:  # visible pixels span > 99% of each side: the padded box is the frame
            assert geo["bbx"] == full, key
            n_full += 1
    assert n_full >= 1


def test_render_view_query_has_box_and_matches_stored_image(test_dir):
    meta = _load_json(test_dir / "meta" / "q_00000.json")
    img, geo = render_view(0, meta["landmark"], meta["view"], "query", CFG.width, CFG.height)
    assert geo["bbx"] is not None
    x1, y1, x2, y2 = geo["bbx"]
    assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height
    assert geo["visible"] > 0 and geo["cover"] > 0
    for k in ("bbx", "visible", "cover", "yaw", "photo", "quality"):
        assert geo[k] == meta[k], k
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=geo["quality"])
    assert buf.getvalue() == (test_dir / "jpg" / "q_00000.jpg").read_bytes()


# --------------------------------------------------------------------------- 5. bad input
def _write_gnd(root: Path, name: str, cfg) -> Path:
    path = root / "test" / name / f"gnd_{name}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(cfg, fh)
    return path


def _good_gnd():
    return {"imlist": ["a", "b", "c"], "qimlist": ["q0", "q1"],
            "gnd": [{"bbx": [0.0, 0.0, 5.0, 5.0], "easy": [0], "hard": [1], "junk": [2]},
                    {"bbx": [1.0, 1.0, 4.0, 4.0], "easy": [], "hard": [2], "junk": []}]}


def test_load_revisited_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="gnd_nope.pkl") as e:
        load_revisited(tmp_path, "nope")
    assert str(tmp_path) in str(e.value)


def test_load_revisited_accepts_a_hand_made_gnd(tmp_path):
    _write_gnd(tmp_path, "mini", _good_gnd())
    ds = load_revisited(tmp_path, "mini")
    assert ds.imlist == ["a", "b", "c"] and ds.n_query == 2 and ds.gnd[1]["hard"] == [2]


def _bad(mutate):
    cfg = _good_gnd()
    mutate(cfg)
    return cfg


BAD_GNDS = {
    "gnd length": _bad(lambda c: c["gnd"].pop()),
    "missing key": _bad(lambda c: c.pop("qimlist")),
    "not a dict": [1, 2, 3],
    "index too large": _bad(lambda c: c["gnd"][0]["hard"].append(3)),
    "negative index": _bad(lambda c: c["gnd"][1]["junk"].append(-1)),
    "bbx of 3": _bad(lambda c: c["gnd"][0].__setitem__("bbx", [0.0, 1.0, 2.0])),
    "no label lists": _bad(lambda c: c["gnd"].__setitem__(0, {"bbx": [0, 0, 1, 1]})),
    "entry not a dict": _bad(lambda c: c["gnd"].__setitem__(0, [0, 1])),
}


@pytest.mark.parametrize("case", sorted(BAD_GNDS))
def test_load_revisited_rejects_malformed_gnd(tmp_path, case):
    path = _write_gnd(tmp_path, "bad", BAD_GNDS[case])
    with pytest.raises(ValueError) as e:
        load_revisited(tmp_path, "bad")
    assert str(path) in str(e.value)


@pytest.mark.parametrize("payload", [b"not a pickle at all", pickle.dumps(_good_gnd())[:20]],
                         ids=["garbage", "truncated"])
def test_load_revisited_unreadable_pickle_names_the_file(tmp_path, payload):
    path = _write_gnd(tmp_path, "broken", None)
    path.write_bytes(payload)
    with pytest.raises(ValueError) as e:
        load_revisited(tmp_path, "broken")
    assert str(path) in str(e.value)


def test_validate_gnd_directly():
    validate_gnd(_good_gnd(), "x")  # valid: no error
    validate_gnd({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"ok": [0], "junk": []}]}, "old")  # old Oxford
    for case, cfg in BAD_GNDS.items():
        with pytest.raises(ValueError, match="WHERE-MARK"):
            validate_gnd(cfg, "WHERE-MARK")
    with pytest.raises(ValueError, match=r"gnd\[0\]\['hard'\].*\[0, 3\)"):
        validate_gnd(BAD_GNDS["index too large"], "w")


def _write_sfm(root: Path, name: str, db) -> Path:
    path = root / "train" / name / f"{name}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(db, fh)
    return path


def _good_sfm():
    split = {"cids": ["c000001", "c000002", "c000003"], "cluster": [0, 0, 1], "qidxs": [0], "pidxs": [1]}
    return {"train": split, "val": {k: list(v) for k, v in split.items()}}


def test_load_sfm_accepts_valid(tmp_path):
    _write_sfm(tmp_path, "mini", _good_sfm())
    db = load_sfm(tmp_path, "mini")
    assert db["train"]["paths"][0] == cid2filename("c000001", tmp_path / "train" / "mini" / "ims")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["train"].__setitem__("pidxs", [3]), "pidxs out of range"),
    (lambda d: d["val"].__setitem__("qidxs", [-1]), "qidxs out of range"),
    (lambda d: d["train"].__setitem__("pidxs", [1, 2]), "1 qidxs but 2 pidxs"),
    (lambda d: d["train"].__setitem__("cluster", [0, 0]), "3 cids but 2 cluster"),
    (lambda d: d["val"].pop("cids"), "lacks keys"),
    (lambda d: d.pop("train"), "'train' split"),
])
def test_load_sfm_rejects_malformed(tmp_path, mutate, match):
    db = _good_sfm()
    mutate(db)
    path = _write_sfm(tmp_path, "bad", db)
    with pytest.raises(ValueError, match=match) as e:
        load_sfm(tmp_path, "bad")
    assert str(path) in str(e.value)


def test_load_sfm_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_sfm(tmp_path, "nope")
    path = _write_sfm(tmp_path, "broken", None)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError) as e:
        load_sfm(tmp_path, "broken")
    assert str(path) in str(e.value)


def test_make_config_and_names():
    cfg = make_config("tiny", difficulty=1.5, seed=7)
    assert cfg.difficulty == 1.5 and cfg.seed == 7
    assert (cfg.width, cfg.n_landmarks) == (CFG.width, CFG.n_landmarks)
    assert dataset_name("tiny") == "synth-tiny"
    assert dataset_name("default", 1.5) == "synth-default-d1.5"
    assert dataset_name("tiny", 1.0, 3) == "synth-tiny-s3"
    assert dataset_name("tiny", 0.5, 2) == "synth-tiny-d0.5-s2"
    assert resolve_name("synth", "tiny", 2.0, 1) == "synth-tiny-d2.0-s1"
    assert dataset_name("default", 1.5) != dataset_name("default", 1.5000001)
    for real in ("roxford5k", "rparis6k", "synth-custom"):
        assert resolve_name(real) == real


@pytest.mark.parametrize("call", [
    lambda: make_config("huge"), lambda: dataset_name("huge"), lambda: resolve_name("synth", "huge"),
])
def test_unknown_preset_is_rejected(call):
    with pytest.raises(ValueError, match="huge"):
        call()


@pytest.mark.parametrize("difficulty", [-0.1, 3.5, float("nan")])
@pytest.mark.parametrize("fn", [make_config, dataset_name, lambda p, difficulty: resolve_name("synth", p, difficulty)])
def test_difficulty_out_of_range_is_rejected(fn, difficulty):
    with pytest.raises(ValueError, match="difficulty"):
        fn("tiny", difficulty=difficulty)


def test_resolve_name_unknown_dataset():
    with pytest.raises(ValueError, match="holidays"):
        resolve_name("holidays")


def test_load_image_errors(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)
    garbage = tmp_path / "x.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(ValueError, match="x.jpg"):
        load_image(garbage)
    # a truncated JPEG (interrupted download) is an error too
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="trunc.jpg"):
        load_image(trunc)


def test_load_image_converts_to_rgb(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (12, 10)
    assert np.array_equal(np.asarray(im)[..., 1], arr)


def _ramp(w, h):
    arr = (np.arange(w * h * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    return Image.fromarray(arr), arr


def test_crop_bbx():
    img, arr = _ramp(40, 30)
    out = crop_bbx(img, [5, 6, 25, 16])
    assert out.size == (20, 10)
    assert np.array_equal(np.asarray(out), arr[6:16, 5:25])
    # partly outside: clipped to the image
    out = crop_bbx(img, [-10.0, 20.0, 15.0, 99.0])
    assert np.array_equal(np.asarray(out), arr[20:30, 0:15])
    assert crop_bbx(img, None) is img


@pytest.mark.parametrize("bbx", [[50, 40, 60, 45], [-20, -20, -5, -5], [10, 10, 5, 20], [10, 10, 10.5, 20]])
def test_crop_bbx_empty_box_is_an_error(bbx):
    img, _ = _ramp(40, 30)
    with pytest.raises(ValueError, match="q7"):
        crop_bbx(img, bbx, name="q7")


def test_crop_bbx_wrong_length():
    img, _ = _ramp(40, 30)
    with pytest.raises(ValueError, match="bbx"):
        crop_bbx(img, [1, 2, 3])


@pytest.mark.parametrize("size_in, longer, expected", [
    ((160, 120), 224, (224, 168)),   # landscape, upscale (only with upscale=True)
    ((90, 200), 100, (45, 100)),     # portrait, downscale
    ((300, 299), 150, (150, 150)),   # nearly square: rounding
    ((64, 64), 32, (32, 32)),
])
def test_resize_longer(size_in, longer, expected):
    img = Image.new("RGB", size_in, (10, 20, 30))
    out = resize_longer(img, longer, upscale=True)
    assert out.size == expected
    assert max(out.size) == longer
    # the reference (PIL thumbnail) never enlarges
    assert resize_longer(img, longer).size == (expected if max(size_in) >= longer else size_in)
    w, h = size_in
    assert abs(out.size[0] / out.size[1] - w / h) <= 1.0 / min(out.size)


def test_resize_longer_identity_and_bad_size():
    img = Image.new("RGB", (50, 20))
    assert resize_longer(img, 50) is img
    for bad in (0, -3):
        with pytest.raises(ValueError, match="positive"):
            resize_longer(img, bad)


# --------------------------------------------------------------------------- 6. retrieval.io
def test_atomic_writes_round_trip(tmp_path):
    obj = {"b": [1, 2.5, None], "a": "x", "nested": {"k": True}}
    p = atomic_write_json(tmp_path / "sub" / "o.json", obj)
    assert p == tmp_path / "sub" / "o.json" and _load_json(p) == obj
    atomic_write_pickle(tmp_path / "o.pkl", {"arr": np.arange(3)})
    assert np.array_equal(_load_pickle(tmp_path / "o.pkl")["arr"], np.arange(3))
    atomic_write_bytes(tmp_path / "o.bin", b"\x00\x01abc")
    assert (tmp_path / "o.bin").read_bytes() == b"\x00\x01abc"
    # overwrite replaces the content
    atomic_write_json(p, [1])
    assert _load_json(p) == [1]
    assert sorted(os.listdir(tmp_path / "sub")) == ["o.json"]  # no temp files left


def test_failed_atomic_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "new.json", {"x": object()})
    assert os.listdir(tmp_path) == []
    # an existing file keeps its old content
    atomic_write_json(tmp_path / "old.json", {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "old.json", {"v": 2, "bad": {1, 2}})
    assert os.listdir(tmp_path) == ["old.json"]
    assert _load_json(tmp_path / "old.json") == {"v": 1}

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no pickling")

    with pytest.raises(RuntimeError):
        atomic_write_pickle(tmp_path / "p.pkl", [1, Unpicklable()])
    assert os.listdir(tmp_path) == ["old.json"]


def test_features_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(4, 8)), rng.normal(size=(11, 8))
    params = {"model": "r50", "whiten": True, "scales": [1, 0.707]}
    path = save_features(tmp_path / "f.npz", q, db, params)
    q2, db2, p2 = load_features(path)
    assert q2.dtype == np.float32 and db2.dtype == np.float32
    assert np.array_equal(q2, q.astype(np.float32)) and np.array_equal(db2, db.astype(np.float32))
    assert p2 == params
    assert os.listdir(tmp_path) == ["f.npz"]


def test_load_features_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.npz"):
        load_features(tmp_path / "none.npz")
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, query=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="lacking.npz"):
        load_features(lacking)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not npz")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_features(garbage)
    nan = tmp_path / "nan.npz"
    np.savez(nan, query=np.full((2, 3), np.nan, np.float32), db=np.zeros((2, 3), np.float32),
             params=np.array("{}"))
    with pytest.raises(ValueError, match="nan.npz.*NaN"):
        load_features(nan)


@pytest.mark.parametrize("q, db, match", [
    (np.array([[0.0, np.nan]]), np.zeros((3, 2)), "query contains NaN"),
    (np.zeros((1, 2)), np.array([[np.inf, 0.0]]), "db contains NaN or Inf"),
    (np.zeros((2, 4)), np.zeros((3, 5)), "query dimension 4 != db dimension 5"),
    (np.zeros(4), np.zeros((3, 4)), "query must be 2-D"),
    (np.zeros((2, 4)), np.zeros((2, 2, 4)), "db must be 2-D"),
])
def test_check_features_rejects(q, db, match):
    with pytest.raises(ValueError, match=match):
        check_features(q, db, name="FEATS")
    with pytest.raises(ValueError, match="FEATS"):
        check_features(q, db, name="FEATS")


def test_check_features_accepts_and_save_refuses_bad(tmp_path):
    check_features(np.zeros((0, 3)), np.ones((5, 3)))  # no queries is fine
    with pytest.raises(ValueError, match="NaN"):
        save_features(tmp_path / "bad.npz", np.array([[np.nan]]), np.zeros((1, 1)), {})
    assert os.listdir(tmp_path) == []

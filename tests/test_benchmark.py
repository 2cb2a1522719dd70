"""The embedded benchmark made faithful (issue 28): per-query ground truth of part queries, checked
against the rendering geometry; the validation benchmark; the rendered distractor set (prefixes,
resume, errors) and its prefix-cached features; the benchmark's size table."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import retrieval.extract as rx
from retrieval.datasets import get_test, load_revisited, parse_spec, render_distractors
from retrieval.datasets import distractors as dmod
from retrieval.datasets import synthetic
from retrieval.datasets.revisited import RevisitedDataset
from retrieval.datasets.stats import benchmark_stats, query_landmarks
from retrieval.datasets.synthetic import build_landmark, dataset_name, make_config, query_gnd, render_view
from retrieval.extract import extract_prefix_cached, extract_vectors
from retrieval.models import build_global_net

REAL_GND = Path(__file__).resolve().parents[2] / "shared" / "real-gnd"


def _meta(folder: Path, stem: str) -> dict:
    return json.loads((folder / "meta" / f"{stem}.json").read_text())


def _gnd(folder: Path, name: str) -> dict:
    with open(folder / f"gnd_{name}.pkl", "rb") as fh:
        return pickle.load(fh)


# --------------------------------------------------------------------------- per-query ground truth
def _check_part_positives(cfg, queries, db):
    """For every part query: each positive view, rendered again with its masks, shows the part;
    each view whose part mask is empty is junk. Returns the number of part queries seen."""
    gnd = query_gnd([q for q, _ in queries], [v for v, _ in db])
    seen = 0
    for (q, _), g in zip(queries, gnd):
        if q["part"] is None:
            continue
        seen += 1
        for i, (view, job) in enumerate(db):
            if view["landmark"] != q["landmark"]:
                assert i not in g["easy"] + g["hard"] + g["junk"]
                continue
            _, _, masks = render_view(cfg.seed, *job, cfg.width, cfg.height, cfg.difficulty, masks=True)
            empty = not masks[q["part"]].any()
            if empty:
                assert i in g["junk"], (q["view"], view["view"])
            if i in g["easy"] or i in g["hard"]:
                assert not empty
    return seen, gnd


def test_part_queries_of_the_tiny_set_follow_the_part_geometry(tiny_data):
    cfg, name = make_config("tiny"), dataset_name("tiny")
    folder = tiny_data / "test" / name
    stored = _gnd(folder, name)
    lm = json.loads((folder / "landmarks.json").read_text())
    queries = [(_meta(folder, q), None) for q in stored["qimlist"]]
    db = [(m, (m["landmark"], m["view"], m["mode"])) for m in (_meta(folder, s) for s in stored["imlist"])]
    seen, gnd = _check_part_positives(cfg, queries, db)
    assert seen >= 1 and seen == sum(p is not None for p in lm["query_part"])
    assert gnd == stored["gnd"]  # the stored lists are the per-query ones


def test_default_set_has_a_part_query_whose_positives_differ_from_its_landmarks_other_query():
    # the default preset's queries, and every db view of one part query's landmark, rendered as generate does
    cfg, name = make_config("default"), dataset_name("default")
    jobs = synthetic._jobs(cfg, name)

    def render(job):
        _, geo = render_view(cfg.seed, *job, cfg.width, cfg.height, cfg.difficulty)
        geo.update(landmark=job[0], view=job[1], mode=job[2], label=synthetic.label_view(geo))
        return geo

    queries = [render(job) for job in jobs["query"]]
    part = [q for q in queries if q["part"] is not None]
    assert 0.1 * len(queries) < len(part) < 0.5 * len(queries)
    key = part[0]["landmark"]
    db = [(render(job), job) for job in jobs["db"] if job[0] == key]
    mine = [(q, None) for q in queries if q["landmark"] == key]
    seen, gnd = _check_part_positives(cfg, mine, db)
    assert seen >= 1
    positives = [set(g["easy"]) | set(g["hard"]) for g in gnd]
    whole = [p for (q, _), p in zip(mine, positives) if q["part"] is None]
    parts = [p for (q, _), p in zip(mine, positives) if q["part"] is not None]
    assert whole and any(p != w for p in parts for w in whole)


def test_label_for_query_rules():
    view = dict(landmark="a", label="easy", visible=0.9, cover=0.3, yaw=0.0, photo=0.1,
                parts=[dict(visible=0.9, cover=0.2), dict(visible=0.0, cover=0.0), dict(visible=0.4, cover=0.05)])
    assert synthetic.label_for_query(dict(landmark="a", part=None), view) == "easy"
    assert synthetic.label_for_query(dict(landmark="a", part=0), view) == "easy"
    assert synthetic.label_for_query(dict(landmark="a", part=1), view) == "junk"   # the part is not visible
    assert synthetic.label_for_query(dict(landmark="a", part=2), view) == "hard"
    assert synthetic.label_for_query(dict(landmark="b", part=None), view) is None


# --------------------------------------------------------------------------- the validation benchmark
def test_validation_benchmark_has_the_test_shape_and_its_own_landmarks(tiny_data):
    name = dataset_name("tiny")
    test, val = load_revisited(tiny_data, name), load_revisited(tiny_data, f"{name}-val")
    assert get_test("synth-val", "tiny", root=tiny_data, progress=False).name == f"{name}-val"
    assert (val.n_query, val.n_db) == (test.n_query, test.n_db)
    keys = {}
    for split, folder in (("test", test.root), ("val", val.root)):
        lm = json.loads((folder / "landmarks.json").read_text())
        keys[split] = {k for k in lm["db"] + lm["query"] if k is not None}
    with open(tiny_data / "train" / name / f"{name}.pkl", "rb") as fh:
        sfm = pickle.load(fh)
    train_dir = tiny_data / "train" / name
    keys["train"] = {_meta(train_dir, c)["landmark"] for s in ("train", "val") for c in sfm[s]["cids"]}
    assert not keys["val"] & keys["test"] and not keys["val"] & keys["train"]
    # disjoint as scenes too: no facade texture of a validation landmark is one of a test or training landmark
    textures = {k: [np.asarray(f.texture).tobytes() for f in build_landmark(0, k)] for s in keys.values() for k in s}
    others = {t for s in ("test", "train") for k in keys[s] for t in textures[k]}
    assert not any(t in others for k in keys["val"] for t in textures[k])


# --------------------------------------------------------------------------- the rendered distractors
@pytest.mark.parametrize("spec,expected", [("synth-10k", ("synth", 10000)), ("synth-250", ("synth", 250)),
                                           ("r1m", ("r1m", 100)), ("r1m-3", ("r1m", 3)), (None, None)])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["synth-", "synth-0", "synth-1m", "r1m-0", "r1m-101", "10k", 5])
def test_parse_spec_rejects(spec):
    with pytest.raises(ValueError, match="distractors="):
        parse_spec(spec)


@pytest.fixture(scope="module")
def distractor_root(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("distract")
    shutil.copytree(tiny_data / "test", root / "test")
    render_distractors(24, "tiny", root, workers=2, progress=False)
    return root


def test_distractors_are_a_prefix_family_of_new_landmarks_and_streets(distractor_root, tmp_path):
    folder = distractor_root / "test" / "synth-tiny-distractors"
    assert json.loads((folder / "manifest.json").read_text())["n"] == 24
    small = render_distractors(9, "tiny", tmp_path, workers=1, progress=False)
    for i in range(9):  # N = 9 is a prefix of N = 24, byte for byte
        assert (small / "jpg" / f"d_{i:07d}.jpg").read_bytes() == (folder / "jpg" / f"d_{i:07d}.jpg").read_bytes()
    metas = [_meta(folder, f"d_{i:07d}") for i in range(24)]
    keys = {m["landmark"] for m in metas}
    assert None in keys and len(keys - {None}) >= 2                 # street scenes and several landmarks
    assert all(k is None or k.startswith("rdistractor") for k in keys)
    with Image.open(folder / "jpg" / "d_0000000.jpg") as im:
        assert im.size == (make_config("tiny").width, make_config("tiny").height)


def test_get_test_appends_distractors_after_the_db(distractor_root):
    ds = get_test("synth", "tiny", root=distractor_root, progress=False, distractors="synth-20")
    plain = get_test("synth", "tiny", root=distractor_root, progress=False)
    assert ds.name == "synth-tiny+synth-20" and ds.n_db == plain.n_db + 20
    assert ds.db_paths()[:plain.n_db] == plain.db_paths() and ds.gnd == plain.gnd
    assert ds.base().name == plain.name and ds.distractor_set == "synth-tiny-distractors"
    assert benchmark_stats(ds)["distractors"] == 20


def test_asking_for_more_distractors_than_rendered_names_the_parameter(distractor_root):
    with pytest.raises(FileNotFoundError, match=r"distractors='synth-25'.*24 are rendered"):
        get_test("synth", "tiny", root=distractor_root, progress=False, distractors="synth-25")


def test_rendering_more_resumes_and_another_version_is_rendered_again(tmp_path, monkeypatch):
    render_distractors(6, "tiny", tmp_path, workers=1, progress=False)
    folder = tmp_path / "test" / "synth-tiny-distractors"
    first = (folder / "jpg" / "d_0000003.jpg").read_bytes()
    calls = []
    real = synthetic.render_view
    monkeypatch.setattr(synthetic, "render_view", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    (folder / "jpg" / "d_0000002.jpg").unlink()
    render_distractors(8, "tiny", tmp_path, workers=1, progress=False)   # missing 2, new 6 and 7
    assert sorted(calls) == ["rdistractor-v2", "rdistractor-v6", "rdistractor-v7"]
    assert (folder / "jpg" / "d_0000003.jpg").read_bytes() == first
    # an interrupted rendering of another renderer version: removed, not mixed
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").unlink()
    (folder / "generating.json").write_text(json.dumps(dict(manifest, renderer_version=-1)))
    calls.clear()
    render_distractors(4, "tiny", tmp_path, workers=1, progress=False)
    assert len(calls) == 4 and not (folder / "jpg" / "d_0000006.jpg").exists()


def test_render_distractors_rejects_a_bad_count(tmp_path):
    with pytest.raises(ValueError, match="n .* must be an int >= 0"):
        render_distractors(-1, "tiny", tmp_path)


# --------------------------------------------------------------------------- prefix-cached features
@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return build_global_net("resnet18", pooling="gem").eval()


def test_extract_prefix_cached_reuses_any_prefix(distractor_root, small_net, tmp_path, monkeypatch):
    paths = [distractor_root / "test" / "synth-tiny-distractors" / "jpg" / f"d_{i:07d}.jpg" for i in range(11)]
    reference = extract_vectors(small_net, paths, image_size=64, progress=False)
    extracted = []
    real = rx.extract_vectors
    monkeypatch.setattr(rx, "extract_vectors", lambda m, p, **k: extracted.append(len(p)) or real(m, p, **k))
    common = dict(image_size=64, shard_size=4, progress=False)
    np.testing.assert_allclose(extract_prefix_cached(small_net, paths[:6], tmp_path, **common), reference[:6],
                               rtol=1e-5, atol=1e-6)
    assert extracted == [4, 2]
    extracted.clear()
    np.testing.assert_allclose(extract_prefix_cached(small_net, paths, tmp_path, **common), reference,
                               rtol=1e-5, atol=1e-6)
    assert extracted == [4, 3]                     # the short shard again in full, then the last one
    extracted.clear()
    np.testing.assert_allclose(extract_prefix_cached(small_net, paths[:5], tmp_path, **common), reference[:5],
                               rtol=1e-5, atol=1e-6)
    assert extracted == []                         # a shorter list reads the longer shards
    other = build_global_net("resnet18", pooling="gem").eval()  # other weights: nothing reused
    extract_prefix_cached(other, paths[:4], tmp_path, **common)
    assert extracted == [4]


# --------------------------------------------------------------------------- the size table
def test_benchmark_stats_of_a_hand_made_set(tmp_path):
    gnd = [dict(bbx=[0, 0, 1, 1], easy=[0, 1], hard=[2], junk=[3]), dict(bbx=[0, 0, 1, 1], easy=[], hard=[4], junk=[])]
    ds = RevisitedDataset("mine", tmp_path, [f"d{i}" for i in range(6)], ["a_000001", "b_000002"], gnd)
    s = benchmark_stats(ds)
    assert (s["queries"], s["query_landmarks"], s["db"], s["distractors"]) == (2, 2, 6, 0)
    assert s["positives"] == dict(mean=2.0, min=1, max=3) and s["junk"] == dict(mean=0.5, min=0, max=1)
    assert s["part_queries"] is None


@pytest.mark.skipif(not (REAL_GND / "gnd_roxford5k.pkl").is_file(), reason="../shared/real-gnd not present")
def test_roxford_queries_fall_into_its_eleven_landmarks(tmp_path):
    from retrieval.datasets.revisited import read_revisited

    ds = read_revisited(REAL_GND / "gnd_roxford5k.pkl", "roxford5k")
    groups = query_landmarks(ds)
    counts = sorted(np.unique(groups, return_counts=True)[1].tolist())
    assert len(set(groups)) == 11 and counts == [5] * 6 + [8] * 5  # 55 original + 15 added to 5 landmarks
    s = benchmark_stats(ds)
    assert (s["queries"], s["db"]) == (70, 4993)

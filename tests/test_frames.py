"""The same-origin frames set: deterministic, resumable, in its documented layout."""

import json

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets import frames as frames_module
from retrieval.datasets.frames import (SPARE_PHOTOS, FramesConfig, derive_frame, frames_name, generate_frames,
                                       load_frames, source_photos, unrelated_kinds, unrelated_scene)
from retrieval.datasets.synthetic import render_view, seed_ints

SMALL = dict(regions_per_photo=1, frames_per_origin=2, n_unrelated=8, size=48)
BENCHMARK_PREFIXES = ("test", "distractor", "train", "val", "valtest", "valdistractor", "rdistractor", "valbench")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return root, generate_frames(root, progress=False, **SMALL)


def test_layout_and_groups(small):
    root, folder = small
    assert folder == root / "frames" / frames_name(FramesConfig(**SMALL))
    data = load_frames(folder)
    n_photos = len(source_photos())
    assert len(data["imlist"]) == n_photos * 2 + 8
    counts = np.bincount(data["groups"][data["groups"] >= 0])
    assert counts.tolist() == [2] * n_photos and (data["groups"] == -1).sum() == 8
    assert (folder / "format_version").read_text().strip() == f"{frames_module.FORMAT_VERSION}.{frames_module.RENDERER_VERSION}"
    for p in data["paths"][:5] + data["paths"][-2:]:
        with Image.open(p) as im:
            assert max(im.size) == 48 and im.mode == "RGB"
    assert all("crop" in e and e[-1].startswith("jpeg") for e, g in zip(data["edits"], data["groups"]) if g >= 0)


def test_unrelated_are_distinct_scenes(small):
    _, folder = small
    data = load_frames(folder)
    unrelated = [i for i, g in zip(data["imlist"], data["groups"]) if g == -1]
    scenes = data["scenes"]
    assert sorted(scenes) == sorted(unrelated)
    kinds = [scenes[i]["kind"] for i in unrelated]
    assert (kinds.count("landmark"), kinds.count("street"), kinds.count("photo")) == (4, 2, 2)
    rendered = [scenes[i] for i in unrelated if scenes[i]["kind"] != "photo"]
    keys = [sc["key"] for sc in rendered if sc["kind"] == "landmark"]
    assert len(set(keys)) == len(keys) and all(sc["key"] is None for sc in rendered if sc["kind"] == "street")
    assert all(k.startswith("frames-lm") and not k.startswith(BENCHMARK_PREFIXES) for k in keys)
    assert len({sc["view"] for sc in rendered}) == len(rendered)  # one view per scene
    photos = [scenes[i]["photo"] for i in unrelated if scenes[i]["kind"] == "photo"]
    assert len(set(photos)) == len(photos) and not set(photos) & set(source_photos())
    # no two unrelated images alike: every pair differs clearly, pixel by pixel
    ims = {i: np.asarray(Image.open(folder / "jpg" / f"{i}.jpg").convert("RGB").resize((32, 32)), np.float32)
           for i in unrelated}
    for a in range(len(unrelated)):
        for b in range(a + 1, len(unrelated)):
            assert np.abs(ims[unrelated[a]] - ims[unrelated[b]]).mean() > 5, (unrelated[a], unrelated[b])


def test_rendered_unrelated_is_the_renderers_view():
    rng = np.random.default_rng(seed_ints(3, "frames", "unrelated-lm0007"))
    im, scene = unrelated_scene("unrelated-lm0007", "landmark", rng, 64, seed=3)
    assert scene["key"] == "frames-lm0007" and max(im.size) == 64 and scene["mode"] in ("easy", "hard")
    ref, _ = render_view(3, "frames-lm0007", scene["view"], scene["mode"], *im.size)
    np.testing.assert_array_equal(np.asarray(im), np.asarray(ref))
    im, scene = unrelated_scene("unrelated-street0001", "street", np.random.default_rng(0), 64, seed=3)
    assert scene["key"] is None and max(im.size) == 64
    im, scene = unrelated_scene(f"unrelated-{SPARE_PHOTOS[0]}", "photo", np.random.default_rng(0), 64)
    assert scene == dict(kind="photo", photo=SPARE_PHOTOS[0]) and max(im.size) == 64 and im.mode == "RGB"


def test_unrelated_mix():
    kinds = lambda n: [k for _, k in unrelated_kinds(n)]  # noqa: E731
    assert kinds(0) == [] and kinds(3) == ["landmark"] * 3
    assert [kinds(60).count(k) for k in ("landmark", "street", "photo")] == [41, 15, len(SPARE_PHOTOS)]
    assert [kinds(6).count(k) for k in ("landmark", "street", "photo")] == [4, 1, 1]
    ids = [i for i, _ in unrelated_kinds(200)]
    assert len(set(ids)) == 200


def test_spare_photos_load_offline():
    from retrieval.datasets.synthetic import asset

    for name in SPARE_PHOTOS:  # shipped in the package (no pooch download), none an origin
        im = asset(name)
        assert im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 and min(im.shape[:2]) >= 64
    assert not set(SPARE_PHOTOS) & set(frames_module.SKIMAGE_PHOTOS)


def test_deterministic_and_resumes(small, tmp_path):
    _, folder = small
    again = generate_frames(tmp_path, progress=False, **SMALL)
    for a, b in zip(sorted((folder / "jpg").iterdir()), sorted((again / "jpg").iterdir())):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()
    # interrupted: the index and one image missing -> regenerated identically, others kept
    victim = sorted((again / "jpg").iterdir())[3]
    kept = sorted((again / "jpg").iterdir())[4]
    mtime = kept.stat().st_mtime_ns
    victim.unlink()
    (again / "frames.json").unlink()
    generate_frames(tmp_path, progress=False, **SMALL)
    assert victim.read_bytes() == (folder / "jpg" / victim.name).read_bytes()
    assert kept.stat().st_mtime_ns == mtime
    other = generate_frames(tmp_path, progress=False, **dict(SMALL, seed=1))
    assert other != again
    assert (other / "jpg" / victim.name).read_bytes() != victim.read_bytes()


def test_other_format_version_is_rebuilt(small, tmp_path):
    _, folder = small
    again = generate_frames(tmp_path, progress=False, **SMALL)
    # a set of an older format: its index, an image under an id of the new format, no version stamp
    index = json.loads((again / "frames.json").read_text())
    (again / "frames.json").write_text(json.dumps(dict(index, format_version=1)))
    (again / "format_version").unlink()
    stale = again / "jpg" / "unrelated-lm0000.jpg"
    stale.write_bytes((folder / "jpg" / "unrelated-street0000.jpg").read_bytes())
    (again / "jpg" / "unrelated-0000.jpg").write_bytes(stale.read_bytes())  # an old-format id
    generate_frames(tmp_path, progress=False, **SMALL)
    assert stale.read_bytes() == (folder / "jpg" / "unrelated-lm0000.jpg").read_bytes()
    assert not (again / "jpg" / "unrelated-0000.jpg").exists()
    assert sorted(p.name for p in (again / "jpg").iterdir()) == sorted(p.name for p in (folder / "jpg").iterdir())
    assert json.loads((again / "frames.json").read_text())["format_version"] == f"{frames_module.FORMAT_VERSION}.{frames_module.RENDERER_VERSION}"


def test_frames_of_one_origin_are_related_not_identical():
    src = Image.fromarray(source_photos()["astronaut"])
    a, _ = derive_frame(src, np.random.default_rng(1), 64)
    b, _ = derive_frame(src, np.random.default_rng(2), 64)
    small = np.asarray(src.resize((64, 64)), np.float32)
    fa, fb = (np.asarray(x.resize((64, 64)), np.float32) for x in (a, b))
    unrelated = np.asarray(Image.fromarray(source_photos()["coffee"]).resize((64, 64)), np.float32)
    assert not np.array_equal(fa, fb)
    corr = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]  # noqa: E731
    assert corr(fa, small) > corr(fa, unrelated) and corr(fb, small) > corr(fb, unrelated)


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="unknown frames options.*nope"):
        generate_frames(tmp_path, nope=1)
    with pytest.raises(ValueError, match="frames_per_origin"):
        generate_frames(tmp_path, frames_per_origin=0)
    with pytest.raises(FileNotFoundError, match="frames.json"):
        load_frames(tmp_path)
    (tmp_path / "frames.json").write_text(json.dumps({"imlist": ["a"], "groups": []}))
    with pytest.raises(ValueError, match="1 images but 0 groups"):
        load_frames(tmp_path)

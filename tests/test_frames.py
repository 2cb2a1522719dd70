"""The same-origin frames set: deterministic, resumable, in its documented layout."""

import json

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets.frames import (FramesConfig, derive_frame, frames_name, generate_frames, load_frames,
                                       source_photos)

SMALL = dict(regions_per_photo=1, frames_per_origin=2, n_unrelated=3, size=48)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return root, generate_frames(root, progress=False, **SMALL)


def test_layout_and_groups(small):
    root, folder = small
    assert folder == root / "frames" / frames_name(FramesConfig(**SMALL))
    data = load_frames(folder)
    n_photos = len(source_photos())
    assert len(data["imlist"]) == n_photos * 2 + 3
    counts = np.bincount(data["groups"][data["groups"] >= 0])
    assert counts.tolist() == [2] * n_photos and (data["groups"] == -1).sum() == 3
    for p in data["paths"][:5] + data["paths"][-2:]:
        with Image.open(p) as im:
            assert max(im.size) == 48 and im.mode == "RGB"
    assert all("crop" in e and e[-1].startswith("jpeg") for e, g in zip(data["edits"], data["groups"]) if g >= 0)


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

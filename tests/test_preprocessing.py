"""The preprocessing of the reference test pipeline (cnnimageretrieval-pytorch ``ImagesFromList`` +
``imresize``), checked against that pipeline's own operations: PIL's crop and ``thumbnail`` with
LANCZOS, the query crop scaled by ``image_size / longer side of the full image``; on the real
ROxf/RPar query boxes (tests/data/real_gnd) with placeholder images of plausible sizes."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.datasets.images import prepare_image, resize_longer, thumbnail_size
from retrieval.extract import ImageList

GND = Path(__file__).parent / "data" / "real_gnd"


def reference(path, image_size, bbx=None):
    """cirtorch's ImagesFromList.__getitem__ (loader, crop, imresize), written out."""
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    imfullsize = max(img.size)
    if bbx is not None:
        img = img.crop(tuple(bbx))
        size = image_size * max(img.size) / imfullsize
    else:
        size = image_size
    img.thumbnail((size, size), Image.LANCZOS)
    return img


def _gradient(w, h):
    """A smooth RGB image (compresses well as PNG, yet every resampling filter changes it)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(a.astype(np.uint8))


# --------------------------------------------------------------------------- the size rule
def test_thumbnail_size_is_pils_rule():
    rng = np.random.default_rng(0)
    shapes = [(768, 1024), (1024, 768), (1024, 681), (500, 333), (1, 50), (50, 1), (3, 1000), (640, 640)]
    shapes += [tuple(int(v) for v in rng.integers(1, 1300, 2)) for _ in range(400)]
    for w, h in shapes:
        for size in (1, 2, 7, 100, 128, 240, 271.5, 362, 500.9, 1024, 1536):
            im = Image.new("L", (w, h))
            im.thumbnail((size, size), Image.LANCZOS)
            assert thumbnail_size(w, h, size) == im.size, (w, h, size)


def test_thumbnail_size_rounding_and_upscale():
    # the example: every 768x1024 portrait at 362 px is 271 wide (round() gives 272)
    assert thumbnail_size(768, 1024, 362) == (271, 362) and round(768 * 362 / 1024) == 272
    assert thumbnail_size(320, 240, 400) == (320, 240)              # never enlarged ...
    assert thumbnail_size(320, 240, 400, upscale=True) == (400, 300)  # ... unless asked
    assert thumbnail_size(240, 320, 480.7, upscale=True) == (360, 480)
    with pytest.raises(ValueError, match="1 px"):
        thumbnail_size(10, 10, 0.5)


def test_resize_longer_equals_thumbnail_pixels():
    for (w, h), size in [((320, 240), 128), ((240, 320), 100), ((1024, 768), 362), ((768, 1024), 362),
                         ((97, 401), 50), ((300, 300), 299)]:
        img = _gradient(w, h)
        ref = img.copy()
        ref.thumbnail((size, size), Image.LANCZOS)
        out = resize_longer(img, size)
        assert out.size == ref.size and np.array_equal(np.asarray(out), np.asarray(ref)), (w, h, size)
        assert img.size == (w, h)                                      # the input is left alone
    small = _gradient(60, 40)
    assert resize_longer(small, 128) is small                          # smaller: kept as it is
    big = resize_longer(small, 120, upscale=True)                      # upscale: LANCZOS to 120x80
    assert big.size == (120, 80)
    assert np.array_equal(np.asarray(big), np.asarray(small.resize((120, 80), Image.LANCZOS)))
    for bad in (0, -1, float("nan"), True, "64"):
        with pytest.raises(ValueError, match="image_size"):
            resize_longer(small, bad)


# --------------------------------------------------------------------------- query crops
def test_query_crop_keeps_the_db_scale(tmp_path):
    img = _gradient(1024, 768)
    img.save(tmp_path / "q.png")
    bbx = [136.5, 34.1, 648.5, 955.7]               # ROxf all_souls_000013's box, clipped below to 768
    for size in (1024, 512, 362):
        got = prepare_image(tmp_path / "q.png", size, [136.5, 34.1, 648.5, 767.0])
        ref = reference(tmp_path / "q.png", size, [136.5, 34.1, 648.5, 767.0])
        assert got.size == ref.size and np.array_equal(np.asarray(got), np.asarray(ref)), size
        # the crop is scaled like its image (size/1024), not brought up to `size`
        assert got.size == thumbnail_size(512, 733, size * 733 / 1024)
        assert max(got.size) < size or size == 1024 and max(got.size) == 733
    # the box reaching outside the image is clipped (a documented difference: PIL pads with black)
    assert prepare_image(tmp_path / "q.png", 1024, bbx).size == (512, 734)
    # ImageList gives the same pixels, normalised
    x = ImageList([tmp_path / "q.png"], 512, bbxs=[[136.5, 34.1, 648.5, 767.0]])[0]
    a = np.asarray(reference(tmp_path / "q.png", 512, [136.5, 34.1, 648.5, 767.0]), np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    torch.testing.assert_close(x, torch.from_numpy(((a - mean) / std).transpose(2, 0, 1).copy()),
                               rtol=0, atol=1e-6)


def _placeholder_size(bbx) -> tuple[int, int]:
    """A plausible (w, h) for a real ROxf/RPar query photo (longer side 1024): 1024x768 when the box
    fits, else 768x1024, else as tall as the box needs (two boxes fit neither 4:3 shape)."""
    x2, y2 = bbx[2], bbx[3]
    if x2 <= 1024 and y2 <= 768:
        return 1024, 768
    if x2 <= 768 and y2 <= 1024:
        return 768, 1024
    return 1024, math.ceil(y2)


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_real_query_boxes_follow_the_reference(tmp_path, name):
    with open(GND / f"gnd_{name}.pkl", "rb") as fh:
        gnd = pickle.load(fh)["gnd"]
    assert len(gnd) == 70
    shapes = {}
    for q, g in enumerate(gnd):
        shape = _placeholder_size(g["bbx"])
        if shape not in shapes:
            shapes[shape] = tmp_path / f"{shape[0]}x{shape[1]}.png"
            _gradient(*shape).save(shapes[shape])
    ratios = []
    for q, g in enumerate(gnd):
        path = shapes[_placeholder_size(g["bbx"])]
        for size in (1024, 362):
            got, ref = prepare_image(path, size, g["bbx"]), reference(path, size, g["bbx"])
            assert got.size == ref.size, (name, q, size, got.size, ref.size)
            if q % 10 == 0:                                   # pixels too, on a sample
                assert np.array_equal(np.asarray(got), np.asarray(ref)), (name, q, size)
        crop = Image.open(path).crop(tuple(g["bbx"]))
        # at 1024 px on 1024-px photos every crop keeps its own pixels (no resize at all)
        assert prepare_image(path, 1024, g["bbx"]).size == crop.size
        ratios.append(1024 / max(crop.size))                  # what resizing the crop alone did
    # the old rule (crop's longer side brought to image_size) enlarged most of these crops
    assert min(ratios) >= 1.0 and np.mean(ratios) > 1.1

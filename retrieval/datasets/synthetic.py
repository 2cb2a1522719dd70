"""The embedded synthetic landmark benchmark.

Every landmark is a small 3-D scene: a main facade, optional side facades meeting it at a corner
and an optional tower with a spire, each a textured plane (procedural stone, cornices, window grids,
doors, rose windows and a mural cut from the photos that scikit-image ships). Views are rendered
with a pinhole camera (yaw around the building, distance, roll, focal length, pan for crops), over a
cluttered street background, with foreground occluders and photometric changes (illumination,
colour cast, blur, noise, JPEG compression).

Labels come from the rendering geometry, per db image and landmark, following the revisited
Oxford/Paris definitions (Radenović et al., CVPR 2018):

* ``easy``: most of the landmark visible (``visible`` >= 0.6 of its projected area), it covers a
  good part of the frame (``cover`` >= 0.10), moderate viewpoint (|yaw| <= 40°) and mild
  photometric change;
* ``junk``: barely visible (``visible`` < 0.2 or ``cover`` < 0.02);
* ``hard``: everything in between (strong viewpoint or scale change, occlusion, crop, darkness).

Labels are per query, as in the revisited protocol. About a third of the queries of multi-part
landmarks are cropped to one part (a tower, a side facade); for those, each view of the landmark is
labelled by the same rules from that part's own visibility (its pixels not hidden by a nearer facade
or an occluder), so a view that does not show the part is junk for that query.

Files are written in exactly the formats of the real benchmarks:

* test split (revisited Oxford): ``<root>/test/<name>/gnd_<name>.pkl`` with ``imlist``,
  ``qimlist`` and ``gnd`` (``bbx``, ``easy``, ``hard``, ``junk``), images ``jpg/<im>.jpg``;
* validation benchmark ``<root>/test/<name>-val/``: the test set's format and shape with landmarks
  of its own (disjoint from the test set and the training split), what settings are chosen on;
* training split (retrieval-SfM-120k): ``<root>/train/<name>/<name>.pkl`` with ``train`` and
  ``val``, each ``cids``, ``cluster``, ``qidxs``, ``pidxs`` (+ ``labels``: the per-image landmark
  id), images under ``ims/`` at ``cid2filename(cid)``.

Generation is deterministic from ``seed`` (every image has its own random stream), parallel, and
resumable: images and their per-image metadata are written atomically and kept on a rerun; the
``manifest.json`` written last marks a complete dataset.

Why this file is long: it is one procedural generator whose parts share state. Textures, scene
geometry, camera and occluders draw in a fixed order from the same per-image random stream (the
images, and with them every stored benchmark, depend on that order), and :func:`generate` renders
through this module's :func:`render_view` and ``_view_params`` (the tests replace them here to count,
fail or frame renders; the forked workers inherit the replacement). Split into modules, the draw
order and those hooks would be spread over several files without making any part usable alone.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from ..config import data_dir
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_pickle
from .tuples import cid2filename

FORMAT_VERSION = 2  # 2: per-query ground truth of part queries, the validation benchmark
MURAL_PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "rocket", "hubble_deep_field",
                "immunohistochemistry", "retina", "colorwheel", "camera", "coins", "moon", "clock")
STONE_TEXTURES = ("brick", "gravel", "grass")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of one benchmark preset (counts of landmarks and rendered views)."""

    width: int
    height: int
    n_landmarks: int            # test landmarks that have queries
    queries_per_landmark: int
    views_per_landmark: int     # db views of every query landmark
    n_distractor_landmarks: int  # db landmarks without queries
    views_per_distractor: int
    n_background: int           # db images with no landmark at all
    n_train_landmarks: int
    n_val_landmarks: int
    views_per_train_landmark: int
    pairs_per_train_landmark: int
    difficulty: float = 1.0     # scales viewpoint, occlusion and photometric strength
    seed: int = 0


PRESETS = {
    "tiny": SyntheticConfig(width=160, height=120, n_landmarks=3, queries_per_landmark=2,
                            views_per_landmark=14, n_distractor_landmarks=3, views_per_distractor=6,
                            n_background=10, n_train_landmarks=6, n_val_landmarks=2,
                            views_per_train_landmark=10, pairs_per_train_landmark=6),
    "default": SyntheticConfig(width=320, height=240, n_landmarks=14, queries_per_landmark=5,
                               views_per_landmark=60, n_distractor_landmarks=24,
                               views_per_distractor=20, n_background=250, n_train_landmarks=80,
                               n_val_landmarks=10, views_per_train_landmark=30,
                               pairs_per_train_landmark=20),
}


def dataset_name(preset: str = "default", difficulty: float = 1.0, seed: int = 0) -> str:
    """Folder/dataset name of a synthetic benchmark, e.g. ``synth-default`` or ``synth-tiny-d1.5``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    if not (0.0 <= difficulty <= 3.0):
        raise ValueError(f"difficulty must be in [0, 3], got {difficulty}")
    name = f"synth-{preset}"
    if difficulty != 1.0:
        name += f"-d{float(difficulty)!r}"  # exact: two difficulties never share a folder
    if seed != 0:
        name += f"-s{seed}"
    return name


def make_config(preset: str = "default", difficulty: float = 1.0, seed: int = 0) -> SyntheticConfig:
    dataset_name(preset, difficulty)  # validates the preset and the difficulty
    return replace(PRESETS[preset], difficulty=float(difficulty), seed=int(seed))


# ----------------------------------------------------------------------------------------------
# assets: photos and stone textures that scikit-image ships (no download)


@lru_cache(maxsize=None)
def asset(name: str) -> np.ndarray:
    """The scikit-image sample photo ``name`` (``skimage.data.<name>()``) as uint8 RGB (H, W, 3), cached."""
    import skimage.data  # lazy: rendering only

    im = np.asarray(getattr(skimage.data, name)())
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im[..., :3]).astype(np.uint8)


def _hsv(h: float, s: float, v: float) -> np.ndarray:

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], shape (h, w)."""
    small = rng.random((cells, max(2, int(cells * w / max(h, 1)))))
    im = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def _crop(rng: np.random.Generator, im: np.ndarray, h: int, w: int) -> np.ndarray:
    """A random crop of ``im`` with aspect h:w, resized to (h, w, 3)."""
    H, W = im.shape[:2]
    scale = rng.uniform(0.35, 0.9)
    ch = int(min(H, W * h / w) * scale)
    cw = max(1, int(ch * w / h))
    ch = max(1, ch)
    y0 = rng.integers(0, H - ch + 1)
    x0 = rng.integers(0, W - cw + 1)
    patch = Image.fromarray(im[y0:y0 + ch, x0:x0 + cw])
    return np.asarray(patch.resize((w, h), Image.BILINEAR), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# landmarks: facades and their textures

PX_PER_M = 20  # texture resolution


@dataclass
class Facade:
    origin: np.ndarray   # world position of the bottom-left corner (m)
    eu: np.ndarray       # unit vector along the facade width
    width: float
    height: float
    texture: Image.Image  # RGBA, alpha = shape of the facade (spire)
    fill: float           # fraction of the rectangle covered by alpha

    @property
    def normal(self) -> np.ndarray:
        # outward normal: eu × up points away from the viewer side for the main facade (-z)
        return np.array([self.eu[2], 0.0, -self.eu[0]])

    def corners(self) -> np.ndarray:
        up = np.array([0.0, 1.0, 0.0])
        o = self.origin
        return np.stack([o + up * self.height, o + self.eu * self.width + up * self.height,
                         o + self.eu * self.width, o])  # TL, TR, BR, BL


def _facade_texture(rng: np.random.Generator, width: float, height: float, palette: dict,
                    mural: bool, spire: bool = False) -> tuple[Image.Image, float]:
    w = int(np.clip(width * PX_PER_M, 32, 360))
    h = int(np.clip(height * PX_PER_M, 32, 360))
    base = palette["wall"][None, None, :] * np.ones((h, w, 1), np.float32)
    stone = _crop(rng, asset(palette["stone"]), h, w)[..., :1] / 255.0
    base = base * (0.75 + 0.45 * stone) * (0.85 + 0.3 * _smooth_noise(rng, h, w, 6)[..., None])
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    trim = tuple(int(c) for c in palette["trim"])
    glass = tuple(int(c) for c in palette["glass"])
    # cornices
    floors = max(1, int(round(height / palette["floor_h"])))
    fh = h / floors
    for f in range(1, floors):
        y = int(f * fh)
        d.rectangle([0, y - 2, w, y + 1], fill=trim)
    # window grid
    cols = max(1, int(round(width / palette["bay_w"])))
    bw = w / cols
    ww, wh = palette["win_w"] * bw, palette["win_h"] * fh
    for f in range(floors):
        for c in range(cols):
            if f == floors - 1 and palette["door"] and c == cols // 2:
                continue
            cx, cy = (c + 0.5) * bw, (f + 0.45) * fh
            box = [cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2]
            lit = rng.random() < palette["lit"]
            col = tuple(int(v) for v in (palette["light"] if lit else glass))
            d.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=trim)
            if palette["arched"]:
                r = min(ww, wh) / 2
                d.rectangle([box[0], box[1] + r, box[2], box[3]], fill=col)
                d.pieslice([box[0], box[1], box[2], box[1] + 2 * r], 180, 360, fill=col)
            else:
                d.rectangle(box, fill=col)
            if palette["mullions"]:
                d.line([cx, box[1], cx, box[3]], fill=trim, width=1)
    if palette["door"]:
        dw, dh = bw * 0.7, fh * 0.8
        cx = (cols // 2 + 0.5) * bw
        d.rectangle([cx - dw / 2, h - dh, cx + dw / 2, h], fill=trim)
        d.rectangle([cx - dw / 2 + 3, h - dh + dw / 2, cx + dw / 2 - 3, h], fill=glass)
        d.pieslice([cx - dw / 2 + 3, h - dh + 3, cx + dw / 2 - 3, h - dh + dw], 180, 360, fill=glass)
    if palette["rose"] and h > 60:
        r = min(w, h) * 0.12
        cx, cy = w * palette["rose_x"], fh * 0.5 if floors > 1 else h * 0.3
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=trim)
        for k in range(8):
            a = k * math.pi / 4
            d.line([cx, cy, cx + r * math.cos(a), cy + r * math.sin(a)], fill=glass, width=2)
    arr = np.asarray(im, dtype=np.float32)
    if mural:
        mh, mw = int(h * rng.uniform(0.25, 0.45)), int(w * rng.uniform(0.25, 0.45))
        y0, x0 = int(rng.integers(0, max(1, h - mh))), int(rng.integers(0, max(1, w - mw)))
        photo = _crop(rng, asset(palette["photo"]), mh, mw)
        arr[y0:y0 + mh, x0:x0 + mw] = photo
        arr[y0:y0 + 3, x0:x0 + mw] = palette["trim"]
        arr[y0 + mh - 3:y0 + mh, x0:x0 + mw] = palette["trim"]
    alpha = np.full((h, w), 255, np.uint8)
    if spire:  # pointed top: the upper 35% is a triangle
        top = int(0.35 * h)
        ys = np.arange(top)[:, None]
        xs = np.abs(np.arange(w)[None, :] - (w - 1) / 2)
        alpha[:top] = np.where(xs <= (ys + 1) / top * w / 2, 255, 0)
    rgba = np.dstack([np.clip(arr, 0, 255).astype(np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA"), float(alpha.mean() / 255.0)


def _palette(rng: np.random.Generator) -> dict:
    hue = rng.random()
    wall = _hsv(hue, rng.uniform(0.1, 0.55), rng.uniform(0.55, 0.95))
    return dict(
        wall=wall.astype(np.float32),
        trim=_hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0)),
        glass=_hsv(rng.uniform(0.5, 0.7), rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.35)),
        light=_hsv(rng.uniform(0.08, 0.16), rng.uniform(0.3, 0.7), rng.uniform(0.8, 1.0)),
        stone=STONE_TEXTURES[rng.integers(len(STONE_TEXTURES))],
        photo=MURAL_PHOTOS[rng.integers(len(MURAL_PHOTOS))],
        floor_h=rng.uniform(2.5, 4.5), bay_w=rng.uniform(1.6, 3.5),
        win_w=rng.uniform(0.3, 0.65), win_h=rng.uniform(0.35, 0.7),
        arched=bool(rng.random() < 0.5), mullions=bool(rng.random() < 0.5),
        door=bool(rng.random() < 0.7), rose=bool(rng.random() < 0.4),
        rose_x=rng.uniform(0.3, 0.7), lit=rng.uniform(0.0, 0.3),
    )


@lru_cache(maxsize=64)
def build_landmark(seed: int, key: str) -> list[Facade]:
    """The facades of landmark ``key`` (deterministic from ``seed`` and ``key``)."""
    rng = np.random.default_rng(seed_ints(seed, "landmark", key))
    pal = _palette(rng)
    W0, H0 = rng.uniform(9, 16), rng.uniform(7, 13)
    facades = []
    tex, fill = _facade_texture(rng, W0, H0, pal, mural=rng.random() < 0.8)
    facades.append(Facade(np.array([-W0 / 2, 0, 0]), np.array([1.0, 0, 0]), W0, H0, tex, fill))
    for side in (+1, -1):
        if rng.random() < (0.8 if side > 0 else 0.45):
            g = math.radians(rng.uniform(45, 90))
            W1, H1 = rng.uniform(5, 11), H0 * rng.uniform(0.75, 1.0)
            pal_side = dict(pal, rose=False, door=bool(rng.random() < 0.3))
            tex, fill = _facade_texture(rng, W1, H1, pal_side, mural=rng.random() < 0.4)
            if side > 0:   # from the right corner backwards
                eu = np.array([math.cos(g), 0.0, math.sin(g)])
                origin = np.array([W0 / 2, 0.0, 0.0])
            else:          # from the back to the left corner
                eu = np.array([math.cos(g), 0.0, -math.sin(g)])
                origin = np.array([-W0 / 2, 0.0, 0.0]) - eu * W1
            facades.append(Facade(origin, eu, W1, H1, tex, fill))
    if rng.random() < 0.65:
        Wt, Ht = W0 * rng.uniform(0.22, 0.4), H0 * rng.uniform(0.6, 1.2)
        xt = rng.uniform(-0.3, 0.3) * W0 - Wt / 2
        pal_t = dict(pal, door=False, rose=bool(rng.random() < 0.5), rose_x=0.5, arched=True)
        tex, fill = _facade_texture(rng, Wt, Ht, pal_t, mural=False, spire=True)
        facades.append(Facade(np.array([xt, H0, 0.0]), np.array([1.0, 0, 0]), Wt, Ht, tex, fill))
    return facades


def _landmark_extent(facades: list[Facade]) -> tuple[np.ndarray, float, float]:
    pts = np.concatenate([f.corners() for f in facades])
    lo, hi = pts.min(0), pts.max(0)
    return (lo + hi) / 2, float(hi[0] - lo[0]), float(hi[1] - lo[1])


# ----------------------------------------------------------------------------------------------
# rendering


def seed_ints(seed: int, *parts) -> list[int]:
    """Four 32-bit ints from SHA-256 of ``seed/part/...``: the seed of one image's own random stream."""
    digest = hashlib.sha256("/".join(str(p) for p in (seed,) + parts).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


@dataclass
class Camera:
    C: np.ndarray
    R: np.ndarray   # rows: right, up, forward
    f: float
    cx: float
    cy: float

    def project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xc = (X - self.C) @ self.R.T
        z = Xc[..., 2]
        uv = np.stack([self.cx + self.f * Xc[..., 0] / z, self.cy - self.f * Xc[..., 1] / z], -1)
        return uv, z


def _camera(target, yaw, dist, eye, roll, fov, width, height) -> Camera:
    C = np.array([target[0] + dist * math.sin(yaw), eye, target[2] - dist * math.cos(yaw)])
    fwd = target - C
    fwd /= np.linalg.norm(fwd)
    right = np.cross([0.0, 1.0, 0.0], fwd)
    right /= np.linalg.norm(right)
    up = np.cross(fwd, right)
    c, s = math.cos(roll), math.sin(roll)
    right, up = c * right + s * up, -s * right + c * up
    f = width / (2 * math.tan(fov / 2))
    return Camera(C, np.stack([right, up, fwd]), f, width / 2, height / 2)


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _render_facade(fac: Facade, cam: Camera, size: tuple[int, int]):
    """Warp a facade texture into the image; returns (RGBA image, projected area) or None."""
    corners = fac.corners()
    if float(np.dot(fac.normal, cam.C - corners.mean(0))) <= 0:
        return None  # back-facing
    uv, z = cam.project(corners)
    if np.any(z < 0.5):
        return None
    tex = fac.texture
    tw, th = tex.size
    # homography texture pixel (a, b) -> image, via the 4 corner correspondences
    src = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float64)
    Hm = _homography(src, uv)
    area = _poly_area(uv)
    shrink = int(max(1, math.floor(math.sqrt(tw * th / max(area, 1.0)) / 1.5)))
    if shrink > 1:  # prefilter: avoid aliasing when the facade is small in the image
        tex = tex.reduce(shrink)
        Hm = Hm @ np.diag([tw / tex.size[0], th / tex.size[1], 1.0])  # small texture -> image
    inv = np.linalg.inv(Hm)
    inv /= inv[2, 2]
    warped = tex.transform(size, Image.PERSPECTIVE, tuple(inv.flatten()[:8]), Image.BILINEAR)
    return warped, area * fac.fill


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    A = []
    for (x, y), (u, v) in zip(src, dst):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(A))
    return vt[-1].reshape(3, 3)


def _background(rng: np.random.Generator, w: int, h: int, horizon: float) -> Image.Image:
    sky_top = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.6), rng.uniform(0.55, 1.0))
    sky_bot = _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0))
    ground = _hsv(rng.uniform(0.0, 0.35), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.6))
    t = np.clip(np.arange(h, dtype=np.float32) / max(horizon, 1.0), 0, 1)[:, None, None]
    img = sky_top * (1 - t) + sky_bot * t
    img = np.broadcast_to(img, (h, w, 3)).copy()
    hz = int(np.clip(horizon, 0, h))
    if hz < h:
        g = _crop(rng, asset(STONE_TEXTURES[rng.integers(3)]), h - hz, w)[..., :1] / 255.0
        img[hz:] = ground * (0.7 + 0.5 * g)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    # generic city clutter on the horizon: blocks with window rows, and trees
    for _ in range(int(rng.integers(2, 7))):
        bw, bh = rng.uniform(0.08, 0.3) * w, rng.uniform(0.1, 0.45) * h
        x0 = rng.uniform(-0.1, 1.0) * w
        col = tuple(int(c) for c in _hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.8)))
        d.rectangle([x0, hz - bh, x0 + bw, hz], fill=col)
        win = tuple(int(c * 0.6) for c in col)
        step = max(4.0, bh / rng.integers(3, 8))
        y = hz - bh + step / 2
        while y < hz - 3:
            d.line([x0 + 2, y, x0 + bw - 2, y], fill=win, width=max(1, int(step / 4)))
            y += step
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.04, 0.12) * w
        x0 = rng.uniform(0, w)
        col = tuple(int(c) for c in _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5)))
        d.ellipse([x0 - r, hz - 2.2 * r, x0 + r, hz - 0.2 * r], fill=col)
    return im


def _occluders(rng: np.random.Generator, im: Image.Image, n: int, scale: float) -> np.ndarray:
    """Draw ``n`` foreground occluders (trees, people, poles, cars, banners); returns their mask."""
    w, h = im.size
    mask = Image.new("L", (w, h), 0)
    d, dm = ImageDraw.Draw(im), ImageDraw.Draw(mask)
    for _ in range(n):
        kind = rng.integers(5)
        s = scale * rng.uniform(0.6, 1.4)
        x, y = rng.uniform(0, w), h - rng.uniform(0, 0.15) * h
        col = tuple(int(c) for c in _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.8)))
        shapes = []
        if kind == 0:    # tree: trunk + crown
            r = 0.22 * s * h
            shapes += [("rect", [x - 0.04 * r, y - 2.2 * r, x + 0.04 * r + 2, y]),
                       ("ell", [x - r, y - 3.6 * r, x + r, y - 1.6 * r])]
            col = tuple(int(c) for c in _hsv(rng.uniform(0.22, 0.4), 0.6, rng.uniform(0.2, 0.45)))
        elif kind == 1:  # person
            r = 0.06 * s * h
            shapes += [("ell", [x - r, y - 6.4 * r, x + r, y - 4.4 * r]),
                       ("rect", [x - 1.3 * r, y - 4.4 * r, x + 1.3 * r, y])]
        elif kind == 2:  # pole / lamp post
            r = 0.9 * s * h
            shapes += [("rect", [x - 0.012 * r - 1, y - r, x + 0.012 * r + 1, y]),
                       ("ell", [x - 0.05 * r, y - r - 0.05 * r, x + 0.05 * r, y - r + 0.05 * r])]
        elif kind == 3:  # car
            r = 0.35 * s * w
            shapes += [("rect", [x - r, y - 0.35 * r, x + r, y - 0.08 * r]),
                       ("rect", [x - 0.6 * r, y - 0.6 * r, x + 0.5 * r, y - 0.3 * r])]
        else:            # banner / bus-stop panel with a photo-like texture
            bw, bh = 0.35 * s * w, 0.3 * s * h
            y0 = y - bh - rng.uniform(0, 0.3) * h
            patch = _crop(rng, asset(MURAL_PHOTOS[rng.integers(len(MURAL_PHOTOS))]),
                          max(2, int(bh)), max(2, int(bw)))
            im.paste(Image.fromarray(patch.astype(np.uint8)), (int(x - bw / 2), int(y0)))
            dm.rectangle([int(x - bw / 2), int(y0), int(x - bw / 2) + max(2, int(bw)) - 1,
                          int(y0) + max(2, int(bh)) - 1], fill=255)
            continue
        for kind_s, box in shapes:
            (d.ellipse if kind_s == "ell" else d.rectangle)(box, fill=col)
            (dm.ellipse if kind_s == "ell" else dm.rectangle)(box, fill=255)
    return np.asarray(mask) > 127


def _view_params(rng: np.random.Generator, mode: str, k: float) -> dict:
    """Camera, occlusion and photometric parameters for a view ``mode`` (query/easy/hard/junk)."""
    p = dict(yaw=rng.normal(0, 12), span=rng.uniform(0.55, 0.9), pan=(rng.normal(0, 0.05), rng.normal(0, 0.05)),
             roll=rng.normal(0, 1.5), occ=int(rng.integers(0, 2)), occ_scale=rng.uniform(0.3, 0.6),
             bright=rng.uniform(0.85, 1.15), cast=rng.normal(0, 0.04, 3), blur=rng.uniform(0, 0.6),
             noise=rng.uniform(0, 3), quality=int(rng.integers(75, 96)), factors=[])
    if mode == "easy":
        p.update(yaw=rng.normal(0, 16), span=rng.uniform(0.45, 0.95))
    elif mode == "hard":
        # one geometric difficulty, a second one of any kind, and often another time of day
        first = str(rng.choice(["view", "small", "crop", "occlusion"]))
        second = str(rng.choice([f for f in ("view", "small", "crop", "occlusion", "light") if f != first]))
        p["factors"] = [first, second]
        for factor in p["factors"]:
            if factor == "view":
                p["yaw"] = rng.choice([-1, 1]) * rng.uniform(42, 42 + 28 * k)
            elif factor == "small":
                p["span"] = rng.uniform(0.2, 0.35) / max(k, 0.3) ** 0.3
            elif factor == "crop":
                p["span"] = rng.uniform(1.7, 1.7 + 1.5 * k)
                p["pan"] = (rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3))
            elif factor == "occlusion":
                p["occ"], p["occ_scale"] = int(rng.integers(3, 3 + int(4 * k) + 1)), rng.uniform(0.8, 1.3)
            else:
                p.update(bright=rng.choice([rng.uniform(0.3, 0.5), rng.uniform(1.5, 1.9)]),
                         cast=rng.normal(0, 0.12 * k, 3), blur=rng.uniform(1.0, 1.0 + 1.5 * k),
                         noise=rng.uniform(4, 4 + 10 * k), quality=int(rng.integers(30, 60)))
        if "light" not in p["factors"] and rng.random() < 0.5 * min(k, 2.0):
            p["factors"].append("time")
            p.update(bright=rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.3, 1.5)]),
                     cast=rng.normal(0, 0.08 * k, 3))
    elif mode == "junk":
        factor = str(rng.choice(["tiny", "edge", "occlusion"]))
        p["factors"] = [factor]
        if factor == "tiny":
            p["span"] = rng.uniform(0.07, 0.14)
            p["pan"] = (rng.uniform(-0.4, 0.4), rng.uniform(-0.2, 0.2))
        elif factor == "edge":
            p["span"] = rng.uniform(0.4, 0.8)
            p["pan"] = (rng.choice([-1, 1]) * rng.uniform(0.75, 0.95), 0.0)
        else:
            p["occ"], p["occ_scale"] = int(rng.integers(8, 14)), rng.uniform(1.3, 2.0)
        p["yaw"] = rng.normal(0, 35)
    return p


def render_view(seed: int, key: str | None, view_id: str, mode: str, width: int, height: int,
                difficulty: float = 1.0, masks: bool = False) -> tuple:
    """Render one image of landmark ``key`` (None: background only).

    Returns the RGB image and its geometry: ``visible`` (visible fraction of the landmark's
    projected area), ``cover`` (visible landmark pixels / image pixels), ``yaw`` (degrees),
    ``photo`` (photometric severity in [0, 1]) and ``bbx`` [x1, y1, x2, y2] of the visible
    landmark (or a part of it for queries), ``parts`` (per facade of the landmark, in
    :func:`build_landmark`'s order: its own ``visible`` fraction and ``cover``, hidden by nearer
    facades and occluders) and ``part`` (for a query about one part: that facade's index, else None).
    ``masks=True`` also returns each part's visible pixels, ``{facade index: (height, width) bool}``.
    """
    rng = np.random.default_rng(seed_ints(seed, "view", view_id))
    p = _view_params(rng, mode, difficulty)
    size = (width, height)
    if key is None:
        facades, center, lw, lh = [], np.array([0.0, 5.0, 0.0]), 12.0, 10.0
    else:
        facades = build_landmark(seed, key)
        center, lw, lh = _landmark_extent(facades)
    fov = math.radians(rng.uniform(45, 65))
    f = width / (2 * math.tan(fov / 2))
    yaw = math.radians(float(np.clip(p["yaw"], -80, 80)))
    # distance so that the landmark spans ``span`` of the image width (or height)
    extent = max(lw * max(math.cos(yaw), 0.35), lh * width / height)
    dist = max(f * extent / (p["span"] * width), 0.6 * max(lw, lh) + 2.0)
    target = center + np.array([p["pan"][0] * lw, p["pan"][1] * lh, 0.0])
    eye = rng.uniform(1.2, 2.0) + (rng.uniform(0, 8) if rng.random() < 0.2 else 0.0)
    cam = _camera(target, yaw, dist, eye, math.radians(p["roll"]), fov, width, height)
    far = cam.C + np.array([math.sin(yaw), 0.0, math.cos(yaw)]) * 1e5
    far[1] = 0.0
    horizon = float(cam.project(far[None])[0][0, 1])
    img = _background(rng, width, height, horizon).convert("RGBA")
    lm_mask = np.zeros((height, width), bool)
    part_masks, part_ids, part_areas, proj_area = [], [], [], 0.0
    order = sorted(range(len(facades)), key=lambda i: -np.linalg.norm(facades[i].corners().mean(0) - cam.C))
    for fi in order:  # far to near: a nearer facade is drawn over a farther one
        out = _render_facade(facades[fi], cam, size)
        if out is None:
            continue
        warped, area = out
        proj_area += area
        a = np.asarray(warped)[..., 3] > 127
        lm_mask |= a
        part_masks.append(a)
        part_ids.append(fi)
        part_areas.append(area)
        img.alpha_composite(warped)
    img = img.convert("RGB")
    occ = _occluders(rng, img, p["occ"], p["occ_scale"])
    vis_mask = lm_mask & ~occ
    # each part's own visible pixels: not hidden by a nearer facade nor by an occluder
    part_vis, covered = {}, np.zeros_like(lm_mask)
    for fi, a in zip(reversed(part_ids), reversed(part_masks)):
        part_vis[fi] = a & ~covered & ~occ
        covered |= a
    # photometric changes
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * p["bright"] * (1.0 + np.asarray(p["cast"]))[None, None, :]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if p["blur"] > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(p["blur"]))
    if p["noise"] > 0:
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, p["noise"], (height, width, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    n_vis = int(vis_mask.sum())
    geo = dict(
        visible=float(min(1.0, n_vis / proj_area)) if proj_area > 0 else 0.0,
        cover=n_vis / float(width * height),
        yaw=float(math.degrees(yaw)),
        photo=float(max(abs(math.log(p["bright"])) / math.log(2.5), p["blur"] / 2.5,
                        p["noise"] / 14.0, float(np.abs(p["cast"]).max()) / 0.25)),
        quality=p["quality"],
        factors=p["factors"],
        bbx=None,
        part=None,
        parts=[_part_geometry(part_vis.get(fi), dict(zip(part_ids, part_areas)).get(fi, 0.0), width * height)
               for fi in range(len(facades))],
    )
    if n_vis:
        m = vis_mask
        if mode == "query" and len(part_masks) > 1 and rng.random() < 0.35:
            # a query about one part of the building (e.g. the tower or a side facade)
            cand = [(fi, pm & ~occ) for fi, pm in zip(part_ids, part_masks) if (pm & ~occ).sum() > 0.1 * n_vis]
            if cand:
                geo["part"], m = cand[int(rng.integers(len(cand)))]
        ys, xs = np.nonzero(m)
        pad = 0.03 * max(width, height)
        geo["bbx"] = [float(max(0, xs.min() - pad)), float(max(0, ys.min() - pad)),
                      float(min(width, xs.max() + 1 + pad)), float(min(height, ys.max() + 1 + pad))]
    if masks:
        return img, geo, {fi: part_vis.get(fi, np.zeros_like(vis_mask)) for fi in range(len(facades))}
    return img, geo


def _part_geometry(mask: np.ndarray | None, area: float, n_pixels: int) -> dict:
    """``visible`` (fraction of the part's projected area) and ``cover`` (share of the frame) of one part."""
    n = int(mask.sum()) if mask is not None else 0
    return dict(visible=float(min(1.0, n / area)) if area > 0 else 0.0, cover=n / float(n_pixels))


def label_view(geo: dict) -> str:
    """``easy``, ``hard`` or ``junk`` from the rendered geometry (see the module docstring)."""
    if geo["visible"] < 0.2 or geo["cover"] < 0.02:
        return "junk"
    if geo["visible"] >= 0.6 and geo["cover"] >= 0.10 and abs(geo["yaw"]) <= 40 and geo["photo"] < 0.5:
        return "easy"
    return "hard"


def label_for_query(query: dict, view: dict) -> str | None:
    """The label of db view ``view`` for query ``query`` (both geometries as :func:`render_view` gives
    them, with ``landmark``): None for a view of another landmark (a negative); for a query about one
    part (``query["part"]``), :func:`label_view` of that part's own ``visible`` and ``cover`` in the view
    (so a view that does not show the part is junk); else the view's landmark label."""
    if view["landmark"] is None or view["landmark"] != query["landmark"]:
        return None
    if query.get("part") is None:
        return view["label"]
    return label_view({**view, **view["parts"][query["part"]]})


# ----------------------------------------------------------------------------------------------
# dataset assembly


def _jobs(cfg: SyntheticConfig, name: str) -> dict:
    """All images to render, as (path relative to the dataset root, landmark key, view id, mode)."""
    rng = np.random.default_rng(seed_ints(cfg.seed, "layout", name))
    modes = np.array(["easy", "hard", "junk"])
    test_q, test_db = [], []
    for l in range(cfg.n_landmarks):
        key = f"test{l:03d}"
        for q in range(cfg.queries_per_landmark):
            test_q.append((key, f"{key}-q{q}", "query"))
        for v in range(cfg.views_per_landmark):
            test_db.append((key, f"{key}-v{v}", str(rng.choice(modes, p=[0.4, 0.45, 0.15]))))
    for l in range(cfg.n_distractor_landmarks):
        key = f"distractor{l:03d}"
        for v in range(cfg.views_per_distractor):
            test_db.append((key, f"{key}-v{v}", str(rng.choice(modes, p=[0.5, 0.4, 0.1]))))
    for b in range(cfg.n_background):
        test_db.append((None, f"background-v{b}", "easy"))
    perm = rng.permutation(len(test_db))  # db order carries no landmark information
    test_db = [test_db[i] for i in perm]
    train = {}
    for split, n in (("train", cfg.n_train_landmarks), ("val", cfg.n_val_landmarks)):
        items = []
        for l in range(n):
            key = f"{split}{l:03d}"
            for v in range(cfg.views_per_train_landmark):
                items.append((key, f"{key}-v{v}", str(rng.choice(modes, p=[0.55, 0.4, 0.05]))))
        train[split] = [items[i] for i in rng.permutation(len(items))]
    # the validation benchmark: the test set's shape, landmarks of its own (prefix "valbench")
    vrng = np.random.default_rng(seed_ints(cfg.seed, "layout-val", name))
    val_q, val_db = [], []
    for l in range(cfg.n_landmarks):
        key = f"valbench{l:03d}"
        val_q += [(key, f"{key}-q{q}", "query") for q in range(cfg.queries_per_landmark)]
        val_db += [(key, f"{key}-v{v}", str(vrng.choice(modes, p=[0.4, 0.45, 0.15])))
                   for v in range(cfg.views_per_landmark)]
    for l in range(cfg.n_distractor_landmarks):
        key = f"valbench-distractor{l:03d}"
        val_db += [(key, f"{key}-v{v}", str(vrng.choice(modes, p=[0.5, 0.4, 0.1])))
                   for v in range(cfg.views_per_distractor)]
    val_db += [(None, f"valbench-background-v{b}", "easy") for b in range(cfg.n_background)]
    val_db = [val_db[i] for i in vrng.permutation(len(val_db))]
    return dict(query=test_q, db=test_db, **train, val_query=val_q, val_db=val_db)


def _render_job(args) -> dict:
    seed, key, view_id, mode, width, height, difficulty, path, meta_path = args
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as fh:
            return json.load(fh)
    img, geo = render_view(seed, key, view_id, mode, width, height, difficulty)
    geo.update(landmark=key, view=view_id, mode=mode,
               label=label_view(geo) if key is not None else None)

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=geo["quality"])
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(meta_path, geo)
    return geo


def _cid(seed: int, view_id: str) -> str:
    return hashlib.md5(f"synth/{seed}/{view_id}".encode()).hexdigest()


def val_name(name: str) -> str:
    """The validation benchmark of the synthetic test set ``name``: ``<name>-val``."""
    return f"{name}-val"


def generate(preset: str = "default", root: str | os.PathLike | None = None, difficulty: float = 1.0,
             seed: int = 0, workers: int | None = None, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Generate (or find) the synthetic benchmark; returns ``{"test": path, "train": path, "val": path}``.

    Test split at ``<root>/test/<name>``, training split at ``<root>/train/<name>``, the validation
    benchmark (the test set's format and shape, landmarks of its own: what settings are chosen on) at
    ``<root>/test/<name>-val``, with ``name = dataset_name(preset, difficulty, seed)``. Resumes an
    interrupted generation; a complete dataset (its ``manifest.json`` matches the configuration) is
    returned as is.
    """

    cfg = make_config(preset, difficulty, seed)
    name = dataset_name(preset, difficulty, seed)
    root = Path(root) if root is not None else data_dir()
    test_dir, train_dir, val_dir = root / "test" / name, root / "train" / name, root / "test" / val_name(name)
    folders = {"test": test_dir, "train": train_dir, "val": val_dir}
    manifest = dict(format_version=FORMAT_VERSION, name=name, preset=preset, config=asdict(cfg))
    if overwrite:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    if all(_manifest_ok(folder, manifest) for folder in folders.values()):
        return folders
    for folder in folders.values():
        # images are reused on a rerun (resume), so a folder made by another version or configuration
        # (a different manifest, complete or in progress) is removed rather than mixed into this one
        found = [_read_manifest(folder / f) for f in ("manifest.json", "generating.json")]
        if any(m is not None and m != manifest for m in found):
            shutil.rmtree(folder, ignore_errors=True)
        atomic_write_json(folder / "generating.json", manifest)

    jobs = _jobs(cfg, name)
    tasks, where = [], []
    for part, items in jobs.items():
        for i, (key, view_id, mode) in enumerate(items):
            if part in ("query", "db", "val_query", "val_db"):
                stem = f"{'q' if part.endswith('query') else 'db'}_{i:05d}"
                folder = val_dir if part.startswith("val_") else test_dir
                path = folder / "jpg" / f"{stem}.jpg"
                meta = folder / "meta" / f"{stem}.json"
            else:
                stem = _cid(seed, view_id)
                path = Path(cid2filename(stem, train_dir / "ims"))
                meta = train_dir / "meta" / f"{stem}.json"
            tasks.append((seed, key, view_id, mode, cfg.width, cfg.height, cfg.difficulty,
                          str(path), str(meta)))
            where.append((part, stem))
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = dict(total=len(tasks), desc=f"rendering {name}", disable=not progress, unit="img")
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            geos = list(tqdm(pool.imap(_render_job, tasks, chunksize=8), **bar))
    else:
        geos = [_render_job(t) for t in tqdm(tasks, **bar)]
    by_part: dict[str, list] = {}
    for (part, stem), geo in zip(where, geos):
        by_part.setdefault(part, []).append((stem, geo))
    _write_test(test_dir, name, by_part["query"], by_part["db"], manifest)
    _write_test(val_dir, val_name(name), by_part["val_query"], by_part["val_db"], manifest)
    _write_train(train_dir, name, by_part, cfg, manifest)
    for folder in folders.values():
        (folder / "generating.json").unlink(missing_ok=True)
    return folders


def _read_manifest(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as another configuration


def _manifest_ok(folder: Path, manifest: dict) -> bool:
    return _read_manifest(folder / "manifest.json") == manifest


def query_gnd(queries: list[dict], db: list[dict]) -> list[dict]:
    """The revisited ground truth of each query (``bbx``, ``easy``, ``hard``, ``junk``: db indices),
    per query (:func:`label_for_query`): a part query's lists follow that part's visibility."""
    views_of: dict[str, list[int]] = {}
    for i, geo in enumerate(db):
        if geo["landmark"] is not None:
            views_of.setdefault(geo["landmark"], []).append(i)
    gnd = []
    for q, geo in enumerate(queries):
        if geo["bbx"] is None:
            raise RuntimeError(f"query {q} ({geo.get('view')}) shows no landmark; change the seed")
        lists = {"easy": [], "hard": [], "junk": []}
        for i in views_of.get(geo["landmark"], []):
            lists[label_for_query(geo, db[i])].append(i)
        gnd.append({"bbx": geo["bbx"], **lists})
    return gnd


def _write_test(folder: Path, name: str, queries: list, db: list, manifest: dict) -> None:
    imlist = [stem for stem, _ in db]
    gnd = query_gnd([geo for _, geo in queries], [geo for _, geo in db])
    atomic_write_pickle(folder / f"gnd_{name}.pkl",
                        {"imlist": imlist, "qimlist": [stem for stem, _ in queries], "gnd": gnd})
    atomic_write_json(folder / "landmarks.json", {
        "db": [geo["landmark"] for _, geo in db], "query": [geo["landmark"] for _, geo in queries],
        "db_label": [geo["label"] for _, geo in db], "query_part": [geo["part"] for _, geo in queries]})
    atomic_write_json(folder / "manifest.json", manifest)


def _write_train(folder: Path, name: str, by_part: dict, cfg: SyntheticConfig, manifest: dict) -> None:
    rng = np.random.default_rng(seed_ints(cfg.seed, "pairs", name))
    out, landmark_ids = {}, {}
    for split in ("train", "val"):
        items = by_part[split]
        cids = [stem for stem, _ in items]
        keys = [geo["landmark"] for _, geo in items]
        cluster = [landmark_ids.setdefault(k, len(landmark_ids)) for k in keys]
        # matching pairs: two non-junk views of the same landmark seen from similar sides
        qidxs, pidxs = [], []
        by_lm: dict[int, list[int]] = {}
        for i, (_, geo) in enumerate(items):
            if geo["label"] != "junk":
                by_lm.setdefault(cluster[i], []).append(i)
        for c, idx in sorted(by_lm.items()):
            cand = [(a, b) for a in idx for b in idx
                    if a != b and abs(items[a][1]["yaw"] - items[b][1]["yaw"]) < 60]
            take = rng.permutation(len(cand))[:cfg.pairs_per_train_landmark]
            for t in sorted(take):
                qidxs.append(cand[t][0])
                pidxs.append(cand[t][1])
        out[split] = {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs,
                      "labels": list(cluster)}
    atomic_write_pickle(folder / f"{name}.pkl", out)
    atomic_write_json(folder / "manifest.json", manifest)

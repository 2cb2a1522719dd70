"""Same-origin frames: a deterministic near-duplicate detection set from the photos the installed
packages ship (scikit-image's sample photos and matplotlib's ``grace_hopper.jpg``).

Every source photo is cut into ``regions_per_photo`` disjoint regions; each region is one *origin*
and gets ``frames_per_origin`` derived frames, each a random chain of the edits that make
near-duplicates in practice: a crop, rescaling, a small rotation, a colour / contrast / brightness
shift, blur, overlaid text (captions, timestamps), borders (letterbox, frames) and JPEG compression.
``n_unrelated`` extra images belong to no origin, each a *distinct scene* seen once
(:func:`unrelated_kinds`): views rendered by :func:`~retrieval.datasets.synthetic.render_view` of
landmarks no benchmark uses (keys ``frames-lm<u>``, one view each) and of streets with no landmark,
plus the shipped scikit-image photos that are no origin (:data:`SPARE_PHOTOS`, one crop each). So
every pair is either *same origin* or *unrelated*, and two unrelated images are never two views of
one scene.

Layout: ``<root>/frames/<name>/jpg/<id>.jpg`` and ``frames.json`` with ``imlist`` and ``groups``
(origin id per image, -1 for unrelated), ``scenes`` (per unrelated image id: ``kind``
landmark / street / photo and its landmark ``key`` and ``view`` or its ``photo``) plus the sources
and parameters. Deterministic from ``seed`` (each image has its own random stream); written
atomically, ``frames.json`` last, so an interrupted generation resumes and a complete set is returned
as is. ``format_version`` (written before the first image) marks the format the images were made
in: a folder of another version is rebuilt from scratch.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm.auto import tqdm

from ..io import atomic_write_bytes, atomic_write_json
from .synthetic import FORMAT_VERSION as RENDERER_VERSION
from .synthetic import asset, render_view, seed_ints
from ..config import data_dir

FORMAT_VERSION = 2  # 2: the unrelated images are distinct rendered scenes and spare photos (1: procedural fills)
#: scikit-image sample photos used as origins (all ship with the package; no download)
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "coins", "moon", "clock", "brick", "gravel", "grass",
                  "colorwheel", "page", "text", "stereo_motorcycle")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
#: scikit-image photos that ship with the package but are no origin: unrelated scenes, one crop each
SPARE_PHOTOS = ("horse", "logo", "cell", "microaneurysms")


@dataclass(frozen=True)
class FramesConfig:
    """Sizes of the same-origin frames set."""

    regions_per_photo: int = 2      # disjoint regions (origins) cut from each photo
    frames_per_origin: int = 6      # derived frames per origin
    n_unrelated: int = 60           # images of no origin
    size: int = 256                 # longer side of every frame (px)
    strength: float = 1.0           # scales the edits (crop, rotation, colour, compression)
    seed: int = 0


def frames_name(cfg: FramesConfig) -> str:
    """Folder name: ``frames-r<regions>-f<frames>-u<unrelated>-s<size>[-x<strength>][-seed<seed>]``."""
    name = f"frames-r{cfg.regions_per_photo}-f{cfg.frames_per_origin}-u{cfg.n_unrelated}-s{cfg.size}"
    if cfg.strength != 1.0:
        name += f"-x{cfg.strength:g}"
    return name + (f"-seed{cfg.seed}" if cfg.seed else "")


def source_photos() -> dict[str, np.ndarray]:
    """The source photos as RGB uint8 arrays (H, W, 3), by name (sorted, deterministic)."""
    import matplotlib.cbook  # lazy: figures only

    photos = {}
    for name in SKIMAGE_PHOTOS:
        if name == "stereo_motorcycle":
            import skimage.data  # lazy: rendering only

            photos[name] = np.ascontiguousarray(skimage.data.stereo_motorcycle()[0][..., :3])
        else:
            photos[name] = asset(name)
    for name in MATPLOTLIB_PHOTOS:
        with Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)) as im:
            photos[name.rsplit(".", 1)[0]] = np.asarray(im.convert("RGB"))
    return photos


def _regions(shape: tuple[int, int], n: int) -> list[tuple[int, int, int, int]]:
    """``n`` disjoint boxes (x0, y0, x1, y1) tiling the photo along its longer side."""
    H, W = shape
    if W >= H:
        xs = np.linspace(0, W, n + 1).round().astype(int)
        return [(int(xs[i]), 0, int(xs[i + 1]), H) for i in range(n)]
    ys = np.linspace(0, H, n + 1).round().astype(int)
    return [(0, int(ys[i]), W, int(ys[i + 1])) for i in range(n)]


def _resize_longer(im: Image.Image, size: int) -> Image.Image:
    s = size / max(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)


def derive_frame(src: Image.Image, rng: np.random.Generator, size: int, strength: float = 1.0) -> tuple[Image.Image, list[str]]:
    """One near-duplicate of ``src``: a random chain of edits. Returns (frame, names of the edits)."""
    k = float(strength)
    edits = []
    im = src
    # crop: keep 60-100 % of each side (always on: frames are never pixel-identical)
    fw, fh = (rng.uniform(1 - 0.4 * k, 1.0, 2).clip(0.3, 1.0))
    w, h = max(8, int(im.width * fw)), max(8, int(im.height * fh))
    x0, y0 = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
    im = im.crop((int(x0), int(y0), int(x0) + w, int(y0) + h))
    edits.append("crop")
    if rng.random() < 0.4:
        angle = float(rng.uniform(-8, 8) * k)
        im = im.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=(0, 0, 0))
        edits.append("rotate")
    im = _resize_longer(im, int(size * rng.uniform(0.5, 1.0)) if rng.random() < 0.5 else size)
    if rng.random() < 0.7:
        im = ImageEnhance.Brightness(im).enhance(float(1 + rng.uniform(-0.35, 0.35) * k))
        im = ImageEnhance.Contrast(im).enhance(float(1 + rng.uniform(-0.4, 0.4) * k))
        im = ImageEnhance.Color(im).enhance(float(max(0.0, 1 + rng.uniform(-0.8, 0.6) * k)))
        edits.append("colour")
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0) * k)))
        edits.append("blur")
    im = _resize_longer(im, size)  # every frame stored at the same longer side
    if rng.random() < 0.4:
        im = _border(im, rng)
        edits.append("border")
    if rng.random() < 0.5:
        im = _text(im, rng)
        edits.append("text")
    quality = int(np.clip(95 - rng.uniform(0, 75) * k, 10, 95))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    edits.append(f"jpeg{quality}")
    buf.seek(0)
    return Image.open(buf).convert("RGB"), edits


def _border(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Letterbox bars (top/bottom or left/right) or a coloured frame; size unchanged."""
    out = im.copy()
    d = ImageDraw.Draw(out)
    colour = tuple(int(c) for c in (rng.integers(0, 256, 3) if rng.random() < 0.5 else (0, 0, 0)))
    t = int(min(im.size) * rng.uniform(0.05, 0.15))
    if rng.random() < 0.5:  # letterbox
        if rng.random() < 0.5:
            d.rectangle([0, 0, im.width, t], fill=colour)
            d.rectangle([0, im.height - t, im.width, im.height], fill=colour)
        else:
            d.rectangle([0, 0, t, im.height], fill=colour)
            d.rectangle([im.width - t, 0, im.width, im.height], fill=colour)
    else:
        d.rectangle([0, 0, im.width - 1, im.height - 1], outline=colour, width=max(2, t // 2))
    return out


def _text(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Overlaid caption / timestamp in PIL's default font, possibly on a box."""
    out = im.copy()
    d = ImageDraw.Draw(out)
    words = ["LIVE", "BREAKING", "00:%02d:%02d" % tuple(rng.integers(0, 60, 2)), "CH %d" % rng.integers(1, 99),
             "(c) archive", "REPLAY", "HD", "news 24", "#%d" % rng.integers(100, 999)]
    text = " ".join(rng.choice(words, size=int(rng.integers(1, 4)), replace=False))
    x, y = int(rng.integers(0, max(1, im.width // 2))), int(rng.integers(0, max(1, im.height - 14)))
    if rng.random() < 0.5:
        box = d.textbbox((x, y), text)
        d.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    d.text((x, y), text, fill=colour)
    return out


def unrelated_kinds(n: int) -> list[tuple[str, str]]:
    """(image id, kind) of the ``n`` unrelated images: a quarter (rounded down) streets, a quarter spare
    photos (at most one per :data:`SPARE_PHOTOS`), the rest landmarks. Ids name the scene:
    ``unrelated-lm<u>``, ``unrelated-street<u>``, ``unrelated-<photo>``."""
    n_street = n // 4
    n_photo = min(len(SPARE_PHOTOS), n // 4)
    n_lm = n - n_street - n_photo
    return ([(f"unrelated-lm{u:04d}", "landmark") for u in range(n_lm)]
            + [(f"unrelated-street{u:04d}", "street") for u in range(n_street)]
            + [(f"unrelated-{name}", "photo") for name in SPARE_PHOTOS[:n_photo]])


def unrelated_scene(image_id: str, kind: str, rng: np.random.Generator, size: int,
                    seed: int = 0) -> tuple[Image.Image, dict]:
    """One unrelated image (longer side ``size``, landscape or portrait, short side 60-100 % of it):
    a view of the new landmark ``frames-lm<u>`` or of a street, rendered with ``seed``, or a crop of a
    spare photo. Returns (image, scene description: ``kind`` and ``key``/``view``/``mode`` or ``photo``)."""
    w, h = size, max(1, round(size * rng.uniform(0.6, 1.0)))
    if rng.random() < 0.5:
        w, h = h, w
    if kind == "photo":
        name = image_id.removeprefix("unrelated-")
        src = asset(name)
        s = min(src.shape[1] / w, src.shape[0] / h) * rng.uniform(0.7, 1.0)  # box of aspect w:h inside
        bw, bh = max(1, round(w * s)), max(1, round(h * s))
        x0, y0 = int(rng.integers(0, src.shape[1] - bw + 1)), int(rng.integers(0, src.shape[0] - bh + 1))
        im = Image.fromarray(src[y0:y0 + bh, x0:x0 + bw]).resize((w, h), Image.BILINEAR)
        return im, dict(kind=kind, photo=name)
    if kind not in ("landmark", "street"):
        raise ValueError(f"unknown unrelated kind {kind!r}")
    u = image_id.removeprefix("unrelated-")
    key = f"frames-{u}" if kind == "landmark" else None
    view = f"frames-{u}-v0" if kind == "landmark" else f"frames-{u}"
    mode = "easy" if rng.random() < 0.5 else "hard"
    im, _ = render_view(seed, key, view, mode, w, h)
    return im, dict(kind=kind, key=key, view=view, mode=mode)


def generate_frames(root: str | os.PathLike | None = None, progress: bool = True, overwrite: bool = False,
                    **config) -> Path:
    """Generate (or find) the same-origin frames set; returns its folder. ``config``: the fields of
    :class:`FramesConfig`. A complete set whose ``frames.json`` matches is returned as is; an
    interrupted one keeps the images already written; one of another ``FORMAT_VERSION`` (or none
    recorded) is rebuilt from scratch."""

    unknown = set(config) - set(FramesConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown frames options {sorted(unknown)}; known: {sorted(FramesConfig.__dataclass_fields__)}")
    cfg = FramesConfig(**config)
    for field in ("regions_per_photo", "frames_per_origin", "size"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"{field} must be >= 1, got {getattr(cfg, field)}")
    if cfg.n_unrelated < 0 or not cfg.strength >= 0:
        raise ValueError(f"n_unrelated and strength must be >= 0, got {cfg.n_unrelated}, {cfg.strength}")
    folder = (Path(root) if root is not None else data_dir()) / "frames" / frames_name(cfg)
    version = f"{FORMAT_VERSION}.{RENDERER_VERSION}"  # the rendered scenes change with the renderer
    meta = dict(format_version=version, config=asdict(cfg))
    index = folder / "frames.json"
    stamp = folder / "format_version"
    if not overwrite and index.is_file():
        try:
            if {k: v for k, v in json.loads(index.read_text()).items() if k in meta} == meta:
                return folder
        except ValueError:
            pass
    if folder.exists() and (not stamp.is_file() or stamp.read_text().strip() != version):
        shutil.rmtree(folder / "jpg", ignore_errors=True)  # images of another format: none is kept
        index.unlink(missing_ok=True)
    atomic_write_bytes(stamp, f"{version}\n".encode())
    photos = source_photos()
    jobs = []  # (image id, origin id or -1, source photo (unrelated: kind), region or None)
    origin = 0
    for name, arr in photos.items():
        for r, box in enumerate(_regions(arr.shape[:2], cfg.regions_per_photo)):
            for f in range(cfg.frames_per_origin):
                jobs.append((f"{name}-r{r}-f{f}", origin, name, box))
            origin += 1
    jobs += [(image_id, -1, kind, None) for image_id, kind in unrelated_kinds(cfg.n_unrelated)]
    edits, scenes = {}, {}
    for image_id, group, name, box in tqdm(jobs, desc="same-origin frames", disable=not progress, unit="img"):
        rng = np.random.default_rng(seed_ints(cfg.seed, "frames", image_id))
        path = folder / "jpg" / f"{image_id}.jpg"
        if group >= 0:
            src = Image.fromarray(photos[name]).crop(box)
            frame, done = derive_frame(src, rng, cfg.size, cfg.strength)
        else:
            (frame, scenes[image_id]), done = unrelated_scene(image_id, name, rng, cfg.size, cfg.seed), []
        edits[image_id] = done
        if path.is_file() and not overwrite:
            continue
        buf = io.BytesIO()
        frame.save(buf, "JPEG", quality=95)
        atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(index, dict(meta, imlist=[j[0] for j in jobs], groups=[j[1] for j in jobs],
                                  sources=sorted(photos), edits=[edits[j[0]] for j in jobs], scenes=scenes))
    return folder


def load_frames(folder: str | os.PathLike) -> dict:
    """``{"paths": [...], "imlist": [...], "groups": (N,) int64, "scenes": {unrelated id: {...}}, ...}`` of a
    generated frames set."""
    folder = Path(folder)
    index = folder / "frames.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: not a frames set (run generate_frames first)")
    data = json.loads(index.read_text())
    for key in ("imlist", "groups"):
        if key not in data:
            raise ValueError(f"{index}: missing key {key!r}")
    if len(data["imlist"]) != len(data["groups"]):
        raise ValueError(f"{index}: {len(data['imlist'])} images but {len(data['groups'])} groups")
    data["groups"] = np.asarray(data["groups"], dtype=np.int64)
    data["paths"] = [folder / "jpg" / f"{i}.jpg" for i in data["imlist"]]
    return data

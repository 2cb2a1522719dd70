"""Image loading and resizing with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import math

import numpy as np
from PIL import Image, UnidentifiedImageError


def load_image(path: str | os.PathLike) -> Image.Image:
    """Load an image as 8-bit RGB; FileNotFoundError / ValueError name the file.

    Grayscale and palette images are expanded to three channels; images with transparency (RGBA,
    LA, P with a transparent colour) are composited over white; 16-bit grayscale (``I;16``, ``I``)
    is scaled to 8 bits (v / 257) rather than clipped. Float images (``F``) and images larger than
    PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, x2) are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im, path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to decode safely ({e}); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    if im.mode == "F":
        raise ValueError(f"image {path}: 32-bit float pixels (mode F) have no defined 8-bit range; "
                         "save it as 8- or 16-bit")
    if im.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNGs): 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64)
        if a.max(initial=0) > 255 or im.mode.startswith("I;16"):
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def crop_bbx(img: Image.Image, bbx, name: str = "image") -> Image.Image:
    """Crop to ``bbx`` = [x1, y1, x2, y2] (pixels; clipped to the image, as in the revisited
    protocol where query images are cropped to their box)."""
    if bbx is None:
        return img
    if len(bbx) != 4:
        raise ValueError(f"{name}: bbx must be [x1, y1, x2, y2], got {bbx!r}")
    w, h = img.size
    x1, y1, x2, y2 = (float(v) for v in bbx)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"{name}: bbx {list(bbx)} has a non-finite coordinate")
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if not (x2 - x1 >= 1 and y2 - y1 >= 1):
        raise ValueError(f"{name}: bbx {list(bbx)} is empty inside the {w}x{h} image")
    return img.crop((round(x1), round(y1), round(x2), round(y2)))


def resize_longer(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the longer side is ``size`` pixels (aspect ratio kept)."""
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    w, h = img.size
    s = size / max(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    return img if new == (w, h) else img.resize(new, Image.BILINEAR)

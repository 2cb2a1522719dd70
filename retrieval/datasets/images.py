"""Image loading, query crops and resizing, with clear errors.

Preprocessing follows the reference test pipeline (cnnimageretrieval-pytorch ``ImagesFromList`` /
``imresize``): a query is cropped to its ``bbx`` and keeps its full image's scale; every image is
shrunk with ``PIL.Image.thumbnail`` (LANCZOS, never enlarged). One deliberate difference: a ``bbx``
reaching outside its image is clipped to it (PIL's crop would pad the outside with black).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

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
    """Crop to ``bbx`` = [x1, y1, x2, y2] (pixels), each coordinate rounded as ``PIL.Image.crop``
    rounds it (Python's ``round``), as the revisited protocol crops its queries. The box is clipped
    to the image first (the reference would pad the outside with black); ValueError names ``name``
    when the box is empty inside the image."""
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


def thumbnail_size(width: int, height: int, size: float, upscale: bool = False) -> tuple[int, int]:
    """Target (w, h) of :meth:`PIL.Image.Image.thumbnail` with a ``(size, size)`` box.

    The rule of the reference pipeline (cnnimageretrieval-pytorch ``imresize`` calls
    ``img.thumbnail((s, s), ANTIALIAS)``): ``size`` is floored, the longer side becomes that many
    pixels and the shorter side is whichever of floor/ceil keeps the aspect ratio closer (floor on a
    tie: a 768x1024 portrait at 362 px becomes 271x362, where ``round()`` gives 272). An image
    already inside the box is returned unchanged unless ``upscale`` (then it is enlarged by the
    same rule). Raises ValueError when ``size`` floors below 1 px.
    """
    box = math.floor(size)
    if box < 1:
        raise ValueError(f"image size must be at least 1 px, got {size!r}")
    if width < 1 or height < 1:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if box >= width and box >= height and not upscale:
        return width, height
    aspect = width / height

    def closest(value: float, err) -> int:  # floor or ceil, whichever is closer in aspect; >= 1
        return max(min(math.floor(value), math.ceil(value), key=err), 1)

    if aspect <= 1:  # portrait or square: the height fills the box
        return closest(box * aspect, lambda n: abs(aspect - n / box)), box
    return box, closest(box / aspect, lambda n: 0 if n == 0 else abs(aspect - box / n))


def resize_longer(img: Image.Image, size: float, upscale: bool = False) -> Image.Image:
    """Resize so that the longer side is ``floor(size)`` pixels, aspect ratio kept, as the reference
    pipeline does (cnnimageretrieval-pytorch ``imresize``: ``PIL.Image.thumbnail`` with LANCZOS):
    the sizes of :func:`thumbnail_size`, LANCZOS with PIL's ``reducing_gap=2.0``, and images already
    smaller than ``size`` are kept as they are. ``upscale=True`` enlarges those too (a named option
    for the multi-resolution experiments, which feed images above their own size; Gordo et al.,
    IJCV 2017). Returns ``img`` itself when the size does not change, else a new image.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Real) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"image_size must be a positive number, got {size!r}")
    new = thumbnail_size(img.width, img.height, size, upscale)
    return img if new == img.size else img.resize(new, Image.LANCZOS, reducing_gap=2.0)


def prepare_image(path: str | os.PathLike, image_size: float, bbx=None, upscale: bool = False) -> Image.Image:
    """An image as a network sees it: loaded (:func:`load_image`), cropped to ``bbx`` when given, and
    resized by :func:`resize_longer`.

    A query crop keeps the scale of its full image, as in the reference test pipeline
    (cnnimageretrieval-pytorch ``ImagesFromList``, used by revisitop's evaluation and by the CSA and
    Token authors' code): it is resized with ``image_size * max(crop size) / max(full image size)``,
    so query and db images share one scale (at 1024 px on ROxf/RPar most crops keep their pixels).
    """
    img = load_image(path)
    if bbx is None:
        return resize_longer(img, image_size, upscale)
    full = max(img.size)
    img = crop_bbx(img, bbx, name=str(path))
    return resize_longer(img, image_size * max(img.size) / full, upscale)

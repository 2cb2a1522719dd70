"""Wall-clock cost per image or query, measured the same way in every notebook (single-threaded
numbers depend on the machine: compare ratios measured in one run, and name the machine)."""

from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

from .extract import extract_vectors

T = TypeVar("T")


def timed_per_item(fn: Callable[[], T], n_items: int) -> tuple[T, float]:
    """``(fn(), milliseconds per item)`` of one call that handles ``n_items`` items (e.g. a search or
    a re-ranking of ``n_items`` queries). ValueError when ``n_items`` < 1."""
    if n_items < 1:
        raise ValueError(f"n_items={n_items}: nothing to time")
    t = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t) / n_items


def ms_per_item(fn: Callable[[Sequence], object], items: Sequence, warmup: int = 0) -> float:
    """Milliseconds per item of one call ``fn(items)``, after an untimed ``fn(items[:warmup])``
    (first-call costs: allocations, lazy imports). ValueError for an empty ``items``."""
    if len(items) == 0:
        raise ValueError("items: nothing to time")
    if warmup:
        fn(items[:warmup])
    return timed_per_item(lambda: fn(items), len(items))[1]


def extraction_ms(model, paths: Sequence, image_size: int, bbxs: Sequence | None = None,
                  scales: Sequence[float] = (1.0,), device: str = "cpu", warmup: int = 0) -> float:
    """Milliseconds per image of extracting ``model``'s descriptors one image at a time (batch 1, as
    a query arrives), images ``paths`` (cropped to ``bbxs`` when given) at ``image_size``."""

    if bbxs is not None and len(bbxs) != len(paths):
        raise ValueError(f"bbxs: {len(bbxs)} boxes for {len(paths)} images")

    def run(idx):
        extract_vectors(model, [paths[i] for i in idx], image_size=image_size, scales=scales, batch_size=1,
                        bbxs=None if bbxs is None else [bbxs[i] for i in idx], device=device, progress=False)

    return ms_per_item(run, list(range(len(paths))), warmup)

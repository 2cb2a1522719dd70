"""Descriptor extraction: the reference preprocessing (:func:`retrieval.datasets.images.prepare_image`:
query crop by ``bbx`` at its image's scale, PIL thumbnail to ``image_size``, never enlarged unless
``upscale``), batched, single- or multi-scale, with progress bars; features of a whole dataset saved
atomically and reused.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..datasets.images import prepare_image
from ..distributed import barrier, is_main, rank, world
from ..io import (atomic_save_npy, atomic_write_json, fingerprint, jsonable, load_arrays, load_features, read_json,
                  save_arrays, save_features)
from ..models.functional import max_over_scales
from ..models.pooling import MAX_OVER_SCALES

DEFAULT_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)
#: the preprocessing rule recorded in every feature file's parameters (caches of another rule are not reused)
RESIZE_RULE = "thumbnail-lanczos, query crop at db scale"


def preprocess_params(upscale: bool = False) -> dict:
    """How images were prepared, as saved with their descriptors."""
    return {"resize": RESIZE_RULE, "upscale": bool(upscale)}


class ImageList(Dataset):
    """Images as normalised tensors (3, h, w) prepared by :func:`~retrieval.datasets.images.prepare_image`
    (longer side ``image_size`` unless smaller and not ``upscale``; query crops by ``bbxs`` at their
    image's scale)."""

    def __init__(self, paths: Sequence, image_size: int, bbxs: Sequence | None = None,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), upscale: bool = False):
        if bbxs is not None and len(bbxs) != len(paths):
            raise ValueError(f"bbxs has {len(bbxs)} boxes for {len(paths)} images")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.paths, self.bbxs, self.image_size, self.upscale = list(paths), bbxs, int(image_size), bool(upscale)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        bbx = self.bbxs[i] if self.bbxs is not None else None
        img = prepare_image(self.paths[i], self.image_size, bbx, self.upscale)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std


def list_collate(batch):
    """A DataLoader collate that keeps the batch a list (images of different sizes)."""
    return batch


def _power(model: torch.nn.Module) -> float:
    """Exponent used to combine scales: the GeM p of the model, else 1 (plain mean). Also 1 when the
    network whitens its output (whitened descriptors have negative entries; as in cirtorch)."""
    if getattr(model, "whiten", None) is not None:
        return 1.0
    p = getattr(getattr(model, "pool", None), "p", None)
    return float(p.detach().reshape(-1)[0]) if isinstance(p, torch.Tensor) else 1.0


@torch.no_grad()
def describe(model: torch.nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Descriptors (B, D) of a batch (B, 3, H, W) at several scales.

    Multi-scale as in Radenović et al. (TPAMI 2018): per-scale L2-normalised descriptors are
    combined by the power mean with the GeM exponent p, (mean_s v_s^p)^(1/p), then L2-normalised;
    for SuperGlobal's poolings (``gemp``, ``rgem``) by the max over scales (Scale-GeM,
    :func:`~retrieval.models.functional.max_over_scales`).
    """
    if not scales:
        raise ValueError("scales must not be empty")
    if len(scales) > 1 and getattr(model, "meta", {}).get("pooling") in MAX_OVER_SCALES:
        return max_over_scales([model(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                                      align_corners=False)) for s in scales])
    p = _power(model)
    acc = None
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        v = model(xs)
        v = v.clamp(min=0).pow(p) if len(scales) > 1 and p != 1 else v
        acc = v if acc is None else acc + v
    if len(scales) == 1:
        return acc
    acc = acc / len(scales)
    if p != 1:
        acc = acc.pow(1.0 / p)
    return acc / (acc.norm(dim=-1, keepdim=True) + 1e-6)


def image_sizes(image_size: int | Sequence[int]) -> list[int]:
    """``image_size`` (an int or a non-empty sequence of ints) as a list of positive ints."""
    sizes = [image_size] if _is_scalar(image_size) else list(image_size)
    if not sizes:
        raise ValueError("image_size must be an int or a non-empty list of ints")
    for s in sizes:
        if not _is_scalar(s) or isinstance(s, bool) or int(s) != s or s <= 0:
            raise ValueError(f"image_size must be positive integer(s), got {image_size!r}")
    return [int(s) for s in sizes]


def _is_scalar(x) -> bool:
    return isinstance(x, numbers.Real) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _size_param(image_size: int | Sequence[int]) -> int | list[int]:
    """How ``image_size`` is recorded in saved parameters: an int for one size, else the list."""
    if _is_scalar(image_size):
        return int(image_size)
    sizes = image_sizes(image_size)
    return sizes[0] if len(sizes) == 1 else sizes


@torch.no_grad()
def extract_vectors(model: torch.nn.Module, paths: Sequence, image_size: int | Sequence[int] = 1024,
                    bbxs: Sequence | None = None, scales: Sequence[float] = (1.0,),
                    batch_size: int = 16, device: str = "cpu", workers: int = 0,
                    desc: str = "extract", progress: bool = True, upscale: bool = False) -> np.ndarray:
    """Descriptors (N, D) float32 of the images at ``paths`` (query crops when ``bbxs`` given).

    Images of equal size inside a batch are run together; others one group at a time.

    ``image_size`` may be a list of sizes (multi-resolution): each image is then described at each
    size (with the multi-scale combination of ``scales`` at each), and the per-size descriptors
    are summed and L2-normalised. A single size (an int, or a list of one) is the plain case.
    ``upscale``: enlarge images smaller than ``image_size`` (off in the reference pipeline).
    """
    common = dict(bbxs=bbxs, scales=scales, batch_size=batch_size, device=device, workers=workers,
                  progress=progress, upscale=upscale)
    if _is_scalar(image_size):
        return _extract_one_size(model, paths, image_size, desc=desc, **common)
    sizes = image_sizes(image_size)
    if len(sizes) == 1:
        return _extract_one_size(model, paths, sizes[0], desc=desc, **common)
    return combine_resolutions([_extract_one_size(model, paths, s, desc=f"{desc} @{s}", **common) for s in sizes])


def combine_resolutions(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Multi-resolution descriptors (N, D) float32 from per-size descriptors ``parts`` (each (N, D),
    one per input size): summed in float64 and L2-normalised, as :func:`extract_vectors` does with a
    list of sizes — so descriptors extracted once per size serve every combination of sizes."""
    if not len(parts):
        raise ValueError("combine_resolutions needs at least one (N, D) array")
    shapes = {np.shape(v) for v in parts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"per-size descriptors must all be (N, D) of one shape, got {sorted(shapes)}")
    acc = np.sum([np.asarray(v, np.float64) for v in parts], axis=0)
    return (acc / (np.linalg.norm(acc, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def _extract_one_size(model: torch.nn.Module, paths: Sequence, image_size: int, bbxs: Sequence | None,
                      scales: Sequence[float], batch_size: int, device: str, workers: int, desc: str,
                      progress: bool, upscale: bool = False) -> np.ndarray:
    model = model.to(device).eval()
    mean, std = model.meta.get("mean", (0.485, 0.456, 0.406)), model.meta.get("std", (0.229, 0.224, 0.225))
    loader = DataLoader(ImageList(paths, image_size, bbxs, mean, std, upscale), batch_size=batch_size,
                        num_workers=workers, collate_fn=list_collate)
    out = []
    with tqdm(total=len(paths), desc=desc, disable=not progress, unit="img") as bar:
        for batch in loader:
            vecs = [None] * len(batch)
            groups: dict[tuple, list[int]] = {}
            for i, x in enumerate(batch):
                groups.setdefault(tuple(x.shape), []).append(i)
            for idx in groups.values():
                # channels-last input: convolutions take their faster NHWC kernels (forward about 1.5x, extraction
                # about 1.25x for EfficientNet-Lite0 at 240 px on 2 CPU cores); the same descriptors up to ~3e-7
                x = torch.stack([batch[i] for i in idx]).to(device).contiguous(memory_format=torch.channels_last)
                v = describe(model, x, scales).float().cpu()
                for j, i in enumerate(idx):
                    vecs[i] = v[j]
            out.append(torch.stack(vecs))
            bar.update(len(batch))
    if not out:
        return np.zeros((0, model.meta.get("outputdim", model.meta.get("dim", 0))), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def features_path(root: str | os.PathLike, dataset: str, name: str) -> Path:
    """``<root>/features/<dataset>/<name>.npz``."""
    return Path(root) / "features" / dataset / f"{name}.npz"


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of the model's state dict (names, shapes and values): features cached for one set of
    weights are never reused for another."""
    return fingerprint(*(x for name, t in sorted(model.state_dict().items()) for x in (name, str(tuple(t.shape)), t)))


def extract_test_set_cached(model: torch.nn.Module, dataset, path: str | os.PathLike,
                    image_size: int | Sequence[int] = 1024,
                    scales: Sequence[float] = (1.0,), batch_size: int = 16, device: str = "cpu",
                    workers: int = 0, overwrite: bool = False, progress: bool = True,
                    shard_size: int = 2048, extra: dict | None = None,
                    upscale: bool = False, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, dict]:
    """Query (cropped to ``bbx``) and db descriptors of a revisited-format ``dataset``.

    Saved atomically at ``path`` with the parameters that made them (incl. a fingerprint of the
    weights); an existing file made with the same parameters is loaded instead of extracting again
    (``overwrite`` forces it). The queries and then the db, in shards of ``shard_size`` images, are
    saved atomically under ``<path>.partial/``, so an interrupted extraction resumes at the first
    missing shard (a shard that does not load or has the wrong shape is extracted again).
    Under ``torchrun`` (an initialised process group) the db shards are split round-robin over the
    ranks, each writing its own shard files; rank 0 extracts the queries, merges and saves; every
    rank returns the same arrays (the same file as one process: shards do not depend on the rank).
    ``image_size``: an int, or a list of sizes for multi-resolution (see :func:`extract_vectors`);
    recorded in the parameters as an int for one size, else as the list, beside the preprocessing
    rule (:func:`preprocess_params`; ``upscale`` as in :func:`extract_vectors`). ``dtype="float16"``
    keeps and stores the db in half precision (for R1M: half the memory; recorded in the parameters).
    Returns ``(query (n_q, D), db (n_db, D), params)``.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}: expected 'float32' or 'float16'")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    params = dict(dataset=dataset.name, model=dict(model.meta), weights_sha1=model_fingerprint(model),
                  image_size=_size_param(image_size), scales=[float(s) for s in scales],
                  preprocess=preprocess_params(upscale), n_query=dataset.n_query, n_db=dataset.n_db,
                  **(extra or {}), **({"dtype": dtype} if dtype != "float32" else {}))
    params = jsonable(params)
    path = Path(path)
    if path.exists() and not overwrite:
        query, db, old = load_features(path)
        if old == params:
            return query, db, params
    partial = path.with_name(path.name + ".partial")
    if is_main() and (overwrite or read_json(partial / "params.json") != params):
        shutil.rmtree(partial, ignore_errors=True)
        atomic_write_json(partial / "params.json", params)
    barrier()
    common = dict(image_size=image_size, scales=scales, batch_size=batch_size, device=device,
                  workers=workers, progress=progress and is_main(), upscale=upscale)
    if is_main():                                                   # the queries: few, rank 0
        query = _load_shard(partial / "query.npy", dataset.n_query)
        if query is None:
            query = extract_vectors(model, dataset.query_paths(), bbxs=dataset.bbxs(), desc="query", **common)
            atomic_save_npy(partial / "query.npy", query)
    db_paths = dataset.db_paths()
    starts = list(range(0, len(db_paths), shard_size))
    for start in starts[rank()::world()]:                           # db shards: round-robin over ranks
        shard = partial / f"db_{start:09d}.npy"
        stop = min(start + shard_size, len(db_paths))
        if _load_shard(shard, stop - start) is None:
            desc = "db" if len(db_paths) <= shard_size else f"db {start}-{stop}"
            atomic_save_npy(shard, extract_vectors(model, db_paths[start:stop], desc=desc, **common))
    barrier()
    if is_main():                                                   # rank 0 merges, every rank reads
        query = np.load(partial / "query.npy")
        shards = [_load_shard(partial / f"db_{a:09d}.npy", min(a + shard_size, len(db_paths)) - a, query.shape[1])
                  for a in starts]
        if any(x is None for x in shards):
            raise RuntimeError(f"{partial}: a db shard is missing or broken after extraction; rerun to resume")
        db = np.concatenate([x.astype(dtype, copy=False) for x in shards]) if shards else \
            np.zeros((0, query.shape[1]), dtype)
        save_features(path, query, db, params, dtype=dtype)
        shutil.rmtree(partial, ignore_errors=True)
    barrier()
    if not is_main():
        query, db, _ = load_features(path)
    return query, db, params


def extract_vectors_cached(model: torch.nn.Module, paths: Sequence, path: str | os.PathLike,
                   image_size: int | Sequence[int] = 1024, scales: Sequence[float] = (1.0,),
                   batch_size: int = 16, device: str = "cpu", workers: int = 0, overwrite: bool = False,
                   progress: bool = True, desc: str = "extract", upscale: bool = False) -> np.ndarray:
    """Descriptors (N, D) of a plain image list (e.g. a training split), cached at ``path`` (.npz).

    The file holds ``vecs`` and the parameters that made them (weights fingerprint, sizes, scales,
    the preprocessing rule, a hash of the paths); it is reused only when all of them match, so descriptors of other
    weights or images are never picked up. Written atomically.
    """

    names = fingerprint("\n".join(str(p) for p in paths))
    params = jsonable(dict(model=dict(getattr(model, "meta", {})), weights_sha1=model_fingerprint(model),
                            image_size=_size_param(image_size), scales=[float(s) for s in scales],
                            preprocess=preprocess_params(upscale), n=len(paths), paths_sha1=names))
    path = Path(path)
    if path.exists() and not overwrite:
        try:
            arrays, old = load_arrays(path, ("vecs",), what="descriptor file")
        except ValueError as e:
            raise ValueError(f"{e}; delete it or pass overwrite=True") from e
        if old == params:
            return arrays["vecs"]
    vecs = extract_vectors(model, paths, image_size=image_size, scales=scales, batch_size=batch_size,
                           device=device, workers=workers, desc=desc, progress=progress, upscale=upscale)
    save_arrays(path, params, vecs=vecs)
    return vecs


def extract_prefix_cached(model: torch.nn.Module, paths: Sequence, folder: str | os.PathLike,
                          image_size: int | Sequence[int] = 1024, scales: Sequence[float] = (1.0,),
                          batch_size: int = 16, device: str = "cpu", shard_size: int = 2048, progress: bool = True,
                          desc: str = "distractors", upscale: bool = False, extra: dict | None = None) -> np.ndarray:
    """Descriptors (N, D) of an image list whose shorter lists are prefixes (a distractor set: its first
    N images), cached in shards under ``folder`` so any N reuses what a larger or smaller N extracted.

    Shard ``k`` holds images ``[k * shard_size, (k + 1) * shard_size)`` (the last one of a list may be
    shorter; it is extracted again in full when a longer list needs it, and a longer shard serves a
    shorter list). Each shard is an ``.npz`` with the parameters that made it (weights fingerprint,
    sizes, scales, preprocessing, ``extra``) and its images' file names; it is reused only when the
    parameters match and its names start with the requested ones. Written atomically, so an
    interrupted extraction resumes at the first missing shard.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not len(paths):
        raise ValueError(f"no images to extract into {folder}")
    params = jsonable(dict(model=dict(getattr(model, "meta", {})), weights_sha1=model_fingerprint(model),
                           image_size=_size_param(image_size), scales=[float(s) for s in scales],
                           preprocess=preprocess_params(upscale), **(extra or {})))
    folder = Path(folder)
    out = []
    for start in range(0, len(paths), shard_size):
        names = [Path(p).name for p in paths[start:start + shard_size]]
        vecs = None
        for file in sorted(folder.glob(f"{start:09d}-*.npz")):
            try:
                arrays, old = load_arrays(file, ("vecs",), what="descriptor shard")
            except ValueError:
                continue
            stored = old.pop("names", [])
            if old == params and stored[:len(names)] == names and len(arrays["vecs"]) == len(stored):
                vecs = arrays["vecs"][:len(names)]
                break
        if vecs is None:
            vecs = extract_vectors(model, paths[start:start + len(names)], image_size=image_size, scales=scales,
                                   batch_size=batch_size, device=device, upscale=upscale, progress=progress,
                                   desc=f"{desc} {start}-{start + len(names)}")
            save_arrays(folder / f"{start:09d}-{len(names)}.npz", dict(params, names=names), vecs=vecs)
            for file in folder.glob(f"{start:09d}-*.npz"):  # shorter shards of this start are superseded
                if int(file.stem.split("-")[1]) < len(names):
                    file.unlink(missing_ok=True)
        out.append(vecs)
    return np.concatenate(out)


def extract_test_set_timed(model: torch.nn.Module, dataset, image_size: int | Sequence[int] = 1024,
                 scales: Sequence[float] = (1.0,), batch_size: int = 16, device: str = "cpu",
                 progress: bool = True, upscale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Query (cropped to ``bbx``) and db descriptors of a revisited-format ``dataset``, not cached,
    and the wall-clock extraction cost in ms per image. Returns ``(query, db, ms_per_image)``."""

    common = dict(image_size=image_size, scales=scales, batch_size=batch_size, device=device, progress=progress,
                  upscale=upscale)
    t0 = time.perf_counter()
    query = extract_vectors(model, dataset.query_paths(), bbxs=dataset.bbxs(), desc="query", **common)
    db = extract_vectors(model, dataset.db_paths(), desc="db", **common)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(query) + len(db))
    return query, db, ms


def _load_shard(path: Path, n: int, dim: int | None = None) -> np.ndarray | None:
    """A saved shard (n, dim) float32, or None when it is absent, unreadable or of another shape
    (then it is extracted again)."""
    if not path.is_file():
        return None
    try:
        vecs = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = vecs.ndim == 2 and vecs.shape[0] == n and vecs.dtype == np.float32 and (dim is None or vecs.shape[1] == dim)
    return vecs if ok else None

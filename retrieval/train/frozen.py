"""What a frozen backbone prefix gives, computed once per training image and view and read back every epoch.

A task that trains only the last blocks of a network (Token's ``train_blocks``; a GeM arm with the same
recipe) recomputes, every epoch, the frozen blocks' forward pass and the image's decoding and resizing. Those
outputs do not change during training (frozen weights, BatchNorm in eval mode), so they are computed once per
(image, view) and stored under the run; an epoch then reads them instead. What it saves depends on the share
of the step the frozen part takes: 1.08x for 06's recipe (EfficientNet-Lite0, ``train_blocks=1``, 128 px),
where the trained last block and the head dominate (``benchmarks/README.md``). A *view* is one
fixed random crop of an image (``views`` of them per image, view ``v`` of image ``j`` seeded by
``(seed, v, j)``: :class:`~retrieval.datasets.training.LabelledImages` with ``key_by_image``); epoch ``e``
uses view ``e mod views``. The uncached loop with the same ``views`` sees the very same crops, so one cached
step equals one uncached step (tests/test_frozen_cache.py); the saving is measured by
``benchmarks/frozen_cache.py``.

The cache folder is keyed like asmk's caches: its ``params.json`` (the frozen weights' fingerprint, the
views' definition, the images) must equal the step's, else another folder is used. Entries are filled in
batches and marked done after they are flushed, so an interrupted fill resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import atomic_save_npy, atomic_write_json, fingerprint, read_json


def module_fingerprint(module: nn.Module) -> str:
    """SHA-1 of a module's state (parameters and buffers, in order, with their names)."""
    state = module.state_dict()
    return fingerprint(list(state), *state.values())


class FrozenCache:
    """Outputs (N, C, h, w) float32 of ``frozen`` (a module in eval mode) for the N images of a training
    split, per view, under ``root/<key>/`` (``view<v>.npy`` memory-mapped, ``view<v>.done.npy`` (N,) bool).
    ``params``: what the outputs depend on besides the weights (image size, crop scale, seed, views, the
    split's images); the weights' fingerprint is added here."""

    def __init__(self, root: str | os.PathLike, frozen: nn.Module, params: dict, n_images: int):
        self.frozen, self.n = frozen, int(n_images)
        self.params = dict(params, frozen_sha1=module_fingerprint(frozen), n_images=self.n)
        key = hashlib.sha1(json.dumps(self.params, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.dir = Path(root) / key
        found = read_json(self.dir / "params.json") if (self.dir / "params.json").is_file() else None
        if found is not None and found != json.loads(json.dumps(self.params, default=str)):
            raise ValueError(f"{self.dir}: a frozen-feature cache of other parameters under the same key")
        if found is None:
            atomic_write_json(self.dir / "params.json", self.params)
        self._maps: dict[int, np.memmap] = {}

    def _files(self, view: int) -> tuple[Path, Path]:
        return self.dir / f"view{view}.npy", self.dir / f"view{view}.done.npy"

    def done(self, view: int) -> np.ndarray:
        """(N,) bool: the images whose output for ``view`` is stored."""
        f = self._files(view)[1]
        return np.load(f) if f.is_file() else np.zeros(self.n, bool)

    def _map(self, view: int, shape: tuple | None = None) -> np.memmap:
        if view not in self._maps:
            data, _ = self._files(view)
            if data.is_file():
                self._maps[view] = np.load(data, mmap_mode="r+")
            elif shape is None:
                raise FileNotFoundError(f"{data}: view {view} not computed yet (fill it first)")
            else:
                self._maps[view] = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32,
                                                             shape=(self.n, *shape))
        return self._maps[view]

    @torch.no_grad()
    def fill(self, image: Callable[[int], torch.Tensor], indices: Sequence[int], view: int, batch_size: int = 32,
             device="cpu", progress: bool = True) -> int:
        """Compute and store the missing outputs of view ``view`` for the split images ``indices``;
        ``image(k)`` → (3, S, S) is the k-th of ``indices`` as the uncached loop would see it (that
        view's crop). Returns how many were computed."""
        indices = np.asarray(indices, np.int64)
        done = self.done(view)
        todo = [k for k, j in enumerate(indices) if not done[j]]
        self.frozen.eval().to(device)
        bar = tqdm(total=len(todo), desc=f"frozen features, view {view}", disable=not progress or not todo,
                   unit="img", leave=False)
        for start in range(0, len(todo), batch_size):
            ks = todo[start:start + batch_size]
            x = torch.stack([image(k) for k in ks]).to(device).contiguous(memory_format=torch.channels_last)
            out = self.frozen(x).float().cpu().numpy()
            arr = self._map(view, out.shape[1:])
            arr[indices[ks]] = out
            arr.flush()
            done[indices[ks]] = True
            atomic_save_npy(self._files(view)[1], done)  # marked only once flushed: a cut fill resumes
            bar.update(len(ks))
        bar.close()
        return len(todo)

    def dataset(self, indices: Sequence[int], view: int, labels: Sequence[int]) -> "CachedViews":
        """Items ``(output (C, h, w), label)`` of the split images ``indices`` in view ``view`` (filled)."""
        indices = np.asarray(indices, np.int64)
        missing = indices[~self.done(view)[indices]]
        if len(missing):
            raise ValueError(f"{self.dir}: view {view} lacks {len(missing)} of the requested images (fill first)")
        return CachedViews(self._map(view), indices, labels)


class CachedViews(torch.utils.data.Dataset):
    """Item ``k``: ``(torch.float32 (C, h, w) copy of outputs[indices[k]], int(labels[k]))``."""

    def __init__(self, outputs: np.ndarray, indices: np.ndarray, labels: Sequence[int]):
        labels = np.asarray(labels, np.int64)
        if labels.shape != indices.shape:
            raise ValueError(f"labels must be ({len(indices)},), got {labels.shape}")
        self.outputs, self.indices, self.labels = outputs, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return torch.from_numpy(np.array(self.outputs[self.indices[k]])), int(self.labels[k])

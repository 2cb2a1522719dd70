"""Training datasets of the tasks (:mod:`retrieval.tasks`) beyond the tuples of
:mod:`retrieval.datasets.tuples`: image groups of a split with their indices (asymmetric
retrieval), labelled images (classification training) and CSA's ranked lists."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..rerank.csa import check_list_sizes, feature_tensor
from ..search import exact_search
from .images import load_image, resize_longer, thumbnail_size
from .tuples import IMAGENET_MEAN, IMAGENET_STD, TuplesDataset

__all__ = ["CSALists", "ImageGroups", "LabelledImages"]


class ImageGroups(torch.utils.data.Dataset):
    """Groups of training images with their split indices: item ``i`` is ``(images (T, 3, H, W),
    indices (T,) int64)``; T = 1 for the distillation methods (an image and, through its index,
    its gallery descriptor), 2 + nnum for AML tuples.

    Images are resized as at test time (:func:`~retrieval.datasets.images.resize_longer`: longer side
    ``image_size``, smaller images kept), normalised by
    ``mean``/``std`` and zero-padded at the bottom / right to the largest resized size in the split
    (``canvas`` (H, W); S × S when orientations mix, no padding when all images share one shape),
    so that batches stack. The resized images are kept in memory (uint8) after their first load:
    ``cache=True`` (a dict: shared with other datasets of the same split and size; per process,
    so with DataLoader workers only within an epoch).
    """

    def __init__(self, split: dict, groups, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 cache: bool | dict = True):
        if "paths" not in split:
            raise ValueError("split lacks 'paths' (load it with load_sfm)")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        groups = np.asarray(groups, dtype=np.int64)
        groups = groups[:, None] if groups.ndim == 1 else groups
        if groups.ndim != 2 or groups.size == 0:
            raise ValueError(f"groups must be (n, T) image indices with n, T >= 1, got shape {groups.shape}")
        self.paths = list(split["paths"])
        if groups.min() < 0 or groups.max() >= len(self.paths):
            raise ValueError(f"group indices out of range [0, {len(self.paths)})")
        self.groups, self.image_size = groups, int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        sizes = set()
        for i in np.unique(groups):
            with Image.open(self.paths[i]) as im:  # header only
                w, h = thumbnail_size(*im.size, self.image_size)
            sizes.add((h, w))
        self.canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
        self._cache: dict | None = cache if isinstance(cache, dict) else {} if cache else None

    def __len__(self) -> int:
        return len(self.groups)

    def image(self, idx: int) -> torch.Tensor:
        """Image ``idx`` of the split, (3, H, W) normalised and padded to ``canvas``."""
        x = self._cache.get(idx) if self._cache is not None else None
        if x is None:
            img = resize_longer(load_image(self.paths[idx]), self.image_size)
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            if self._cache is not None:
                self._cache[idx] = x
        out = torch.zeros((3, *self.canvas))
        out[:, :x.shape[1], :x.shape[2]] = (x.float() / 255.0 - self.mean) / self.std
        return out

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"group index {i} out of range for {len(self)} groups")
        idx = self.groups[i % len(self)]
        return torch.stack([self.image(int(j)) for j in idx]), torch.from_numpy(idx.copy())


class LabelledImages(TuplesDataset):
    """Training images with class labels: item ``i`` is ``(image (3, S, S), label)``, the image
    loaded, optionally randomly cropped, resized (longer side S), normalised and padded as in
    :class:`~retrieval.datasets.tuples.TuplesDataset`. ``indices`` (n,) select the images of ``split``; ``labels`` (n,) int64
    in [0, C). ``key_by_image``: the crop is seeded by (seed, epoch, split index of the image) rather than
    by the item's position, so that image j has the same crop in every subset drawn for an epoch (a fixed
    *view*: :mod:`retrieval.train.frozen`)."""

    def __init__(self, split: dict, indices, labels, image_size: int, mean=None, std=None,
                 augment: bool = False, crop_scale: float = 0.8, seed: int = 0, key_by_image: bool = False):
        indices, labels = np.asarray(indices, np.int64), np.asarray(labels, np.int64)
        if indices.ndim != 1 or indices.size == 0 or labels.shape != indices.shape:
            raise ValueError(f"indices and labels must be non-empty (n,) arrays of the same length, got "
                             f"{indices.shape} and {labels.shape}")
        norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
        super().__init__(split, np.stack([indices, indices], 1), image_size, augment=augment,
                         crop_scale=crop_scale, seed=seed, **norm)  # checks split, indices, size, crops
        self.labels, self.key_by_image = labels, bool(key_by_image)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        i = i % len(self)
        j = int(self.tuples[i, 0])
        return self.image(j, key=(j if self.key_by_image else i, 0)), int(self.labels[i])


class CSALists(torch.utils.data.Dataset):
    """CSA training lists from first-stage descriptors of a *training* split (Ouyang et al. 2021).

    Every image i is a query; its ranked list is its top-K among the other images by inner product
    of ``features`` (N, D). Item i is ``(aff (K+1, L), positives (K+1,) bool)``: the query then its
    K candidates in a random order (seeded by ``seed``, epoch and i; the query stays first), the L
    anchors are the query and its top L−1 results in rank order, positives share the query's label.
    ``K`` counts candidates only; the authors' training ``--topk`` counts the query too (their
    ``RerankDataset_TopKSIM`` takes the top ``topk`` of the self-similarity, the query first), so
    their ``topk=512`` is ``K=511`` here (``L`` counts the query in both).
    """

    def __init__(self, features, labels, K: int = 512, L: int = 512, seed: int = 0, shuffle: bool = True):
        x = feature_tensor(features, "features")
        lab = torch.as_tensor(np.asarray(labels))
        if lab.shape != (x.shape[0],):
            raise ValueError(f"labels must be ({x.shape[0]},), got {tuple(lab.shape)}")
        self.K, self.L = check_list_sizes(K, L, x.shape[0] - 1)
        need = max(self.K, self.L - 1)
        ranks, _ = exact_search(x.numpy(), x.numpy(), need + 1)   # (need+1, N), self first
        ranks = torch.from_numpy(ranks.T.copy())                    # (N, need+1)
        own = ranks == torch.arange(x.shape[0])[:, None]
        # drop each image itself (usually rank 0; duplicates may put it lower)
        keep = torch.where(own.any(1, keepdim=True), ~own, torch.ones_like(own))
        self.lists = torch.stack([row[m][:need] for row, m in zip(ranks, keep)])
        self.x, self.labels, self.seed, self.shuffle, self.epoch = x, lab, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        cand = self.lists[i, :self.K]
        if self.shuffle:
            g = torch.Generator().manual_seed(hash((self.seed, self.epoch, int(i))) % (2 ** 63))
            cand = cand[torch.randperm(self.K, generator=g)]
        items = torch.cat([torch.tensor([i]), cand])
        anchors = torch.cat([torch.tensor([i]), self.lists[i, :self.L - 1]])
        aff = self.x[items] @ self.x[anchors].T
        return aff, self.labels[items] == self.labels[i]

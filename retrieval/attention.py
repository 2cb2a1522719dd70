"""Token's spatial attention shown and counted (Wu et al., AAAI 2022, Fig. 4): which image regions
each token gathers."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .extract import ImageList


def _images(model, paths: Sequence, image_size: int):

    return ImageList(list(paths), image_size, mean=model.meta["mean"], std=model.meta["std"])


def plot_token_attention(model, paths: Sequence, image_size: int, device: str = "cpu"):
    """One row per image of ``paths``: the image, then each token's attention map (bilinearly
    upsampled, 0..1 colour scale) over it. Returns the figure."""
    import matplotlib.pyplot as plt  # lazy: figures only

    tokens = int(model.meta["tokens"])
    fig, axes = plt.subplots(len(paths), tokens + 1, figsize=(2.2 * (tokens + 1), 2.0 * len(paths)), squeeze=False)
    mean = torch.tensor(model.meta["mean"]).view(3, 1, 1)
    std = torch.tensor(model.meta["std"]).view(3, 1, 1)
    for row, x in zip(axes, _images(model, paths, image_size)):
        maps = model.attention_maps(x[None].to(device))[0].cpu()  # (L, h, w)
        rgb = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        row[0].imshow(rgb)
        for j in range(tokens):
            up = torch.nn.functional.interpolate(maps[None, j:j + 1], size=x.shape[-2:], mode="bilinear")[0, 0]
            row[j + 1].imshow(rgb)
            row[j + 1].imshow(up.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            row[j + 1].set_title(f"token {j + 1}", fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def token_location_shares(model, paths: Sequence, image_size: int, device: str = "cpu") -> np.ndarray:
    """(L,) share of the feature-map locations of ``paths`` whose strongest attention is each token's
    (sums to 1): a token that wins no location is unused."""
    tokens = int(model.meta["tokens"])
    wins = np.zeros(tokens)
    for x in _images(model, paths, image_size):
        best = model.attention_maps(x[None].to(device))[0].argmax(0).flatten().cpu().numpy()
        wins += np.bincount(best, minlength=tokens)
    return wins / wins.sum()

"""Dimension reduction of fixed descriptors by metric learning (deep-retrieval study): a linear
projection + L2 trained with an in-batch loss over landmark labels."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..config import seed_everything
from ..io import fingerprint, load_vectors
from ..losses import get_loss
from ..models.pooling import L2N
from ..models.whitening import learn_pca_whitening
from ..train import TrainConfig, fit
from .base import load_train_split, make_config, task_options

PROJECTION_DEFAULTS = dict(
    train_features=None,       # (N, D) descriptors of the training split (.npy / extract_vectors_cached .npz)
    train_set="synth", preset="default", root=None,
    dim=64, loss="lifted", margin=1.0,  # "lifted" (Oh Song et al. 2016, α = 1) or "pairs" (in-batch contrastive)
    init="pca",                # "pca": start from PCA to `dim` (mean removed); "random"
    epochs=30, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=1e-4, drop_last=True,
)


def projection_config(**overrides) -> dict:
    """Defaults of :func:`projection_pairs` + TrainConfig, updated by ``overrides``."""
    return make_config(PROJECTION_DEFAULTS, overrides, "projection")


def projection_pairs(config: dict):
    """A linear projection D → ``dim`` + L2 of fixed descriptors, trained with an in-batch
    metric-learning loss over landmark labels (``lifted`` or ``pairs``). Returns
    ``(model, data, loss_fn)``; ``model`` maps (B, D) → (B, dim) L2-normalised."""
    cfg = projection_config(**{k: v for k, v in config.items() if k in projection_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    if not cfg["train_features"]:
        raise ValueError("train_features: path of the training split's descriptors is required")
    if cfg["init"] not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random', got {cfg['init']!r}")
    X = np.asarray(load_vectors(cfg["train_features"]), np.float32)
    split = load_train_split(cfg)["train"]
    labels = np.asarray(split.get("labels", split["cluster"]))
    if len(labels) != len(X):
        raise ValueError(f"train_features has {len(X)} rows but the training split {len(labels)} images")
    if not 1 <= cfg["dim"] <= X.shape[1]:
        raise ValueError(f"dim must be in 1..{X.shape[1]}, got {cfg['dim']}")
    proj = nn.Linear(X.shape[1], cfg["dim"])
    if cfg["init"] == "pca":  # rows: the principal directions (unwhitened), bias: −mean·P
        pca = learn_pca_whitening(X, cfg["dim"], whiten=False)
        P = pca.P
        with torch.no_grad():
            proj.weight.copy_(torch.from_numpy(P))
            proj.bias.copy_(torch.from_numpy(-(P @ pca.mean)))
    model = nn.Sequential(proj, L2N())
    loss = get_loss(cfg["loss"], margin=cfg["margin"])
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(labels.astype(np.int64)))

    def loss_fn(net, batch):
        x, y = batch
        return loss(net(x), y)

    return model, data, loss_fn


def train_projection(config: dict):
    """Build :func:`projection_pairs` and train it; returns ``(model, history)`` (model in eval)."""
    cfg = projection_config(**config)
    model, data, loss_fn = projection_pairs(cfg)
    task = dict(task_options(cfg, PROJECTION_DEFAULTS, ("root", "train_features")),
                data_sha1=fingerprint(data.tensors[0]))
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    return model.eval(), history

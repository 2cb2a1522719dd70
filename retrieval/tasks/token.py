"""Token (Wu et al., AAAI 2022) trained as a landmark classifier with a margin softmax."""

from __future__ import annotations


from pathlib import Path

import numpy as np
import torch

from ..config import resolve_device, seed_everything
from ..datasets.training import LabelledImages
from ..distributed import init_distributed, is_main
from ..io import file_hash, fingerprint
from ..models.checkpoints import read_checkpoint
from ..models.token import build_token, init_backbone_from_global
from ..train import TrainConfig, fit
from ..train.frozen import FrozenCache
from .base import load_train_split, make_config, task_options

TOKEN_DEFAULTS = dict(
    train_set="synth", preset="default", root=None,
    backbone="resnet101", weights=None,  # torchvision weights (paper: ImageNet-pretrained ResNet-101)
    backbone_init=None,        # a GlobalNet / cirtorch checkpoint whose backbone initialises Token's (e.g. 02's GeM)
    train_blocks=5,            # last backbone blocks trained (5: all, as the paper); the others frozen
    aggregator="token",        # "gem": the control arm, GeM + Linear + BN in place of the tokeniser, all else equal
    dim=1024, tokens=4, heads=8, encoder_layers=1, decoder_layers=2, outputdim=1024,  # the paper's sizes
    drop=0.1, attn_drop=0.1, drop_path=0.1,
    loss="arcface", scale=None, margin=0.2,  # scale None: √outputdim (paper: ArcFace, s = √1024 = 32, m = 0.2)
    image_size=512,            # training images: longer side, padded to square
    augment=True, crop_scale=0.8,  # random crops of [crop_scale, 1] of each side
    images_per_epoch=None,     # a random subset of the training images each epoch (None: all)
    views=None,                # None: a fresh random crop per image and epoch; V: V fixed crops per image, epoch e
                               # uses crop e mod V (what cache_frozen needs; the same crops cached or not)
    cache_frozen=False,        # compute the frozen blocks' outputs once per image and view, read them back
                               # (retrieval.train.frozen: same steps as uncached with the same views)
    cache_dir=None,            # where (None: <out_dir>/frozen_cache)
    # the released experiment.sh (GLDv2, 4 GPUs): SGD momentum 0.9, lr 0.01, 5 warm-up epochs then decay
    # to 0, wd 1e-4, no clipping, 30 epochs, batch 128, 512-px images
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_epochs=5.0, grad_clip=None,
    epochs=30, batch_size=128,
)


def token_config(**overrides) -> dict:
    """Defaults of :func:`token_classification` + TrainConfig, updated by ``overrides`` (unknown keys rejected)."""
    return make_config(TOKEN_DEFAULTS, overrides, "Token")


def _class_labels(split: dict):
    """Landmark labels of the split's images as 0..C-1 (``labels`` if present, else ``cluster``)."""
    raw = np.asarray(split.get("labels", split["cluster"]))
    classes, labels = np.unique(raw, return_inverse=True)
    return labels.astype(np.int64), len(classes)


def token_classification(config: dict):
    """Token trained as a classifier of the training split's landmarks with a margin softmax (ArcFace
    in the paper, or CosFace) and cross-entropy, on single images (Wu et al., AAAI 2022).

    Returns ``(model, data, loss_fn)``; ``data(epoch)`` is a :class:`~retrieval.datasets.training.LabelledImages` of all
    training images, or of ``images_per_epoch`` of them drawn for that epoch (seeded).
    """
    cfg = token_config(**{k: v for k, v in config.items() if k in token_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    init_distributed(cfg["device"])
    split = load_train_split(cfg)["train"]
    labels, n_classes = _class_labels(split)
    model = build_token(cfg["backbone"], cfg["dim"], cfg["tokens"], cfg["heads"], cfg["encoder_layers"],
                        cfg["decoder_layers"], cfg["outputdim"], classes=n_classes, loss=cfg["loss"],
                        scale=cfg["scale"], margin=cfg["margin"], drop=cfg["drop"], attn_drop=cfg["attn_drop"],
                        drop_path=cfg["drop_path"], train_blocks=cfg["train_blocks"], weights=cfg["weights"],
                        aggregator=cfg["aggregator"])
    if cfg["backbone_init"]:
        init_backbone_from_global(model, read_checkpoint(cfg["backbone_init"]))
    n, per_epoch, views = len(labels), cfg["images_per_epoch"], cfg["views"]
    if per_epoch is not None and not 1 <= int(per_epoch) <= n:
        raise ValueError(f"images_per_epoch must be in 1..{n} (the training images) or None, got {per_epoch}")
    if views is not None and (int(views) != views or views < 1):
        raise ValueError(f"views must be None or a positive integer, got {views!r}")
    cache = None
    if cfg["cache_frozen"]:
        if cfg["augment"] and views is None:
            raise ValueError("cache_frozen=True with augment=True needs views=V (a fixed number of crops per image)")
        if model.train_blocks >= 5:
            raise ValueError("cache_frozen=True needs train_blocks < 5 (a frozen part to cache)")
        root = cfg["cache_dir"] or (cfg.get("out_dir") and Path(cfg["out_dir"]) / "frozen_cache")
        if not root:
            raise ValueError("cache_frozen=True needs cache_dir or out_dir (where the cache lives)")
        cache = FrozenCache(root, model.frozen_part(), dict(
            image_size=cfg["image_size"], augment=cfg["augment"], crop_scale=cfg["crop_scale"], seed=cfg["seed"],
            views=views if cfg["augment"] else None, mean=list(model.meta["mean"]), std=list(model.meta["std"]),
            images=fingerprint(list(split["paths"]))), n)

    def data(epoch: int):
        idx = np.arange(n)
        if per_epoch is not None:
            idx = np.sort(np.random.default_rng([cfg["seed"], epoch]).choice(n, int(per_epoch), replace=False))
        ds = LabelledImages(split, idx, labels[idx], cfg["image_size"], model.meta["mean"], model.meta["std"],
                            augment=cfg["augment"], crop_scale=cfg["crop_scale"], seed=cfg["seed"],
                            key_by_image=views is not None)
        view = (epoch if views is None else epoch % int(views)) if cfg["augment"] else 0  # crops only with augment
        ds.set_epoch(view)
        if cache is None:
            return ds
        cache.fill(lambda k: ds[k][0], idx, view, cfg["batch_size"], resolve_device(cfg["device"]), progress=is_main())
        return cache.dataset(idx, view, labels[idx])

    def loss_fn(net, batch) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(net(x, y, from_frozen=cache is not None), y)

    return model, data, loss_fn


def train_token(config: dict):
    """Build :func:`token_classification` (seeded) and train it; returns ``(model, history)``, the
    model in eval mode. The checkpoint records the options and a hash of the backbone
    initialisation, so ``resume`` never continues another experiment's weights."""
    cfg = token_config(**config)
    seed_everything(cfg["seed"])
    model, data, loss_fn = token_classification(cfg)
    task = task_options(cfg, TOKEN_DEFAULTS, ("root", "backbone_init", "cache_frozen", "cache_dir"))  # same steps cached or not
    for k in ("aggregator", "views"):  # options added later: at their defaults, checkpoints saved before them resume
        if task[k] == TOKEN_DEFAULTS[k]:
            del task[k]
    if cfg["backbone_init"]:
        task["backbone_init_sha1"] = file_hash(cfg["backbone_init"], "sha1")
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    model.meta["trained"] = True
    return model.eval(), history

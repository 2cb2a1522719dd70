"""Global descriptor training with mined tuples (Radenović et al., TPAMI 2018)."""

from __future__ import annotations

import torch

from ..config import resolve_device, seed_everything
from ..datasets.tuples import TupleMiner, TuplesDataset
from ..distributed import init_distributed, sharded_extract
from ..extract import extract_vectors
from ..losses import get_loss
from ..models import build_global_net
from ..train import TrainConfig, fit
from .base import load_train_split, make_config, task_options

GLOBAL_DEFAULTS = dict(
    train_set="synth", preset="default", root=None,  # SfM-120k-format training data under <root>/train
    backbone="resnet101", pooling="gem", whitening=False,  # whitening: FC layer in the network
    weights=None,              # pretrained backbone: "imagenet" (EfficientNet-Lite), torchvision's "IMAGENET1K_V1"; None: random
    frozen_bn=None,            # keep BatchNorm statistics (cirtorch); None: frozen when starting from weights
    loss="contrastive", margin=0.7,
    epochs=100, batch_size=5, optimizer="adamw", lr=1e-6, weight_decay=1e-6,  # fine-tuning (cirtorch)
    image_size=362,            # training images: longer side (cirtorch: 362), padded to square
    qsize=2000, poolsize=20000, nnum=5, mining="hard",  # tuples per epoch, negative pool, negatives
    mining_batch_size=32,
)


def global_config(**overrides) -> dict:
    """Defaults of :func:`global_tuples` (Radenović et al. TPAMI 2018 where they apply) + TrainConfig
    defaults, updated by ``overrides``; unknown keys are rejected."""
    return make_config(GLOBAL_DEFAULTS, overrides, "training")


def global_tuples(config: dict):
    """Global descriptor training with tuples (query, positive, ``nnum`` hard negatives mined every
    epoch with the current network) and a tuple loss (Radenović et al., TPAMI 2018).

    Returns ``(model, data, loss_fn)``; ``data(epoch)`` mines that epoch's tuples (feature
    extraction sharded across ranks under DDP).
    """
    cfg = global_config(**{k: v for k, v in config.items() if k in global_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    init_distributed(cfg["device"])  # under torchrun: one rank renders the data, the others wait
    model = build_global_net(cfg["backbone"], cfg["pooling"], whitening=cfg["whitening"], weights=cfg["weights"])
    # cirtorch freezes BatchNorm always (it always starts from ImageNet); from random init the
    # statistics must be learned, hence the default
    model.frozen_bn = bool(cfg["weights"] is not None if cfg["frozen_bn"] is None else cfg["frozen_bn"])
    split = load_train_split(cfg)["train"]
    miner = TupleMiner(split, qsize=cfg["qsize"], poolsize=cfg["poolsize"], nnum=cfg["nnum"],
                       seed=cfg["seed"], mode=cfg["mining"])
    device = resolve_device(cfg["device"])
    loss = get_loss(cfg["loss"], margin=cfg["margin"])
    size = int(cfg["image_size"])

    def describe(paths):
        return extract_vectors(model, paths, image_size=size, batch_size=cfg["mining_batch_size"],
                               device=device, progress=False)

    resized: dict = {}  # the training images decoded and resized once, for every epoch's tuples

    def data(epoch: int) -> TuplesDataset:
        tuples = miner.mine(epoch, lambda paths: sharded_extract(describe, paths))
        ds = TuplesDataset(split, tuples, size, model.meta["mean"], model.meta["std"], seed=cfg["seed"], cache=resized)
        ds.set_epoch(epoch)
        return ds

    def loss_fn(net, batch: torch.Tensor) -> torch.Tensor:
        B, T = batch.shape[:2]
        return loss(net(batch.flatten(0, 1)).view(B, T, -1))

    return model, data, loss_fn


def train_global(config: dict):
    """Build :func:`global_tuples` and train it; returns ``(model, history)``."""
    cfg = global_config(**config)
    model, data, loss_fn = global_tuples(cfg)
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task_options(cfg, GLOBAL_DEFAULTS))
    model.meta["trained"] = True
    if model.meta.get("p") is not None:  # the learned GeM p, as the reloaded checkpoint has it (feature caches compare meta)
        model.meta["p"] = float(model.pool.p.detach().reshape(-1)[0])
    return model, history

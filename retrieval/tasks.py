"""Training tasks: ``(model, data, loss_fn)`` builders for :func:`retrieval.train.fit`.

Each task takes one config dict (TrainConfig fields plus task options), so the same JSON runs in a
notebook or under torchrun::

    torchrun --standalone --nproc_per_node=2 -m retrieval.train \
        --task retrieval.tasks:global_tuples --config cfg.json
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import data_dir, resolve_device
from .datasets import dataset_name, generate
from .datasets.tuples import TupleMiner, TuplesDataset, load_sfm
from .extract import extract_vectors
from .losses import get_loss
from .models import build_global_net
from .train import TrainConfig, barrier, fit, init_distributed, is_main, sharded_extract, world

GLOBAL_DEFAULTS = dict(
    train_set="synth", preset="default", root=None,  # SfM-120k-format training data under <root>/train
    backbone="resnet101", pooling="gem", whitening=False,  # whitening: FC layer in the network
    weights=None,              # torchvision backbone weights, e.g. "IMAGENET1K_V1" (None: random init)
    loss="contrastive", margin=0.7,
    epochs=100, batch_size=5, optimizer="adamw", lr=1e-6, weight_decay=1e-6,  # fine-tuning (cirtorch)
    image_size=362,            # training images: longer side (cirtorch: 362), padded to square
    qsize=2000, poolsize=20000, nnum=5, mining="hard",  # tuples per epoch, negative pool, negatives
    mining_batch_size=32,
)


def _config(defaults: dict, overrides: dict, what: str) -> dict:
    cfg = dict(TrainConfig().to_dict(), **defaults)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown {what} options {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def global_config(**overrides) -> dict:
    """Defaults of :func:`global_tuples` (Radenović et al. TPAMI 2018 where they apply) + TrainConfig
    defaults, updated by ``overrides``; unknown keys are rejected."""
    return _config(GLOBAL_DEFAULTS, overrides, "training")


def _train_split(cfg: dict) -> dict:
    root = Path(cfg["root"]) if cfg.get("root") else data_dir()
    if cfg["train_set"] == "synth":
        if is_main():  # under DDP one rank renders, the others wait
            generate(cfg["preset"], root, progress=False)
        if world() > 1:
            barrier()
        name = dataset_name(cfg["preset"])
    else:
        name = cfg["train_set"]
    return load_sfm(root, name)


def global_tuples(config: dict):
    """Global descriptor training with tuples (query, positive, ``nnum`` hard negatives mined every
    epoch with the current network) and a tuple loss (Radenović et al., TPAMI 2018).

    Returns ``(model, data, loss_fn)``; ``data(epoch)`` mines that epoch's tuples (feature
    extraction sharded across ranks under DDP).
    """
    cfg = global_config(**{k: v for k, v in config.items() if k in global_config()})
    init_distributed(cfg["device"])  # under torchrun: one rank renders the data, the others wait
    model = build_global_net(cfg["backbone"], cfg["pooling"], whitening=cfg["whitening"], weights=cfg["weights"])
    split = _train_split(cfg)["train"]
    miner = TupleMiner(split, qsize=cfg["qsize"], poolsize=cfg["poolsize"], nnum=cfg["nnum"],
                       seed=cfg["seed"], mode=cfg["mining"])
    device = resolve_device(cfg["device"])
    loss = get_loss(cfg["loss"], margin=cfg["margin"])
    size = int(cfg["image_size"])

    def describe(paths):
        return extract_vectors(model, paths, image_size=size, batch_size=cfg["mining_batch_size"],
                               device=device, progress=False)

    def data(epoch: int) -> TuplesDataset:
        tuples = miner.mine(epoch, lambda paths: sharded_extract(describe, paths))
        ds = TuplesDataset(split, tuples, size, model.meta["mean"], model.meta["std"], seed=cfg["seed"])
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
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=_task_options(cfg, GLOBAL_DEFAULTS))
    model.meta["trained"] = True
    return model, history


CSA_DEFAULTS = dict(
    train_features=None,        # (N, D) descriptors of the training split (.npy, or .npz from extract_cached); a list: augmented
    whitening=None,             # a saved Whitening (.npz) applied to them first (or a list, one per train_features)
    train_set="synth", preset="default", root=None,
    K=512, L=512, dim=768, depth=2, heads=12, mlp_ratio=4.0, drop=0.1, attn_drop=0.1, drop_path=0.1,
    temperature=2.0, alpha=0.2,
    # recipe of Ouyang et al. (NeurIPS 2021): SGD, lr 0.1, warm-up + cosine, wd 1e-6, clipping 1.0
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-6, grad_clip=1.0, warmup_epochs=1.0,
    epochs=100, batch_size=256,
)


def csa_config(**overrides) -> dict:
    """Defaults of :func:`csa_lists` + TrainConfig, updated by ``overrides`` (unknown keys rejected)."""
    return _config(CSA_DEFAULTS, overrides, "CSA")


def load_vectors(path) -> "np.ndarray":
    """Descriptors (N, D) from a ``.npy`` or from a ``.npz`` written by
    :func:`retrieval.extract.extract_cached` (key ``vecs``)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptor file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "vecs" not in z:
                raise ValueError(f"{path}: expected an array 'vecs' (extract_cached), found {sorted(z)}")
            return z["vecs"]
    return np.load(path, allow_pickle=False)


def csa_lists(config: dict):
    """CSA training (Ouyang et al., NeurIPS 2021) on the training split's ranked lists: every training
    image is a query, positives share its landmark label. Returns ``(model, data, loss_fn)``;
    ``data(epoch)`` is one :class:`~retrieval.models.csa.CSALists`, or their concatenation when
    ``train_features`` lists several extractors' descriptors (the paper's "augmented" training:
    the same images ranked by each extractor; ``whitening`` then a list of the same length, items
    may be None)."""
    from torch.utils.data import ConcatDataset

    from .models.csa import CSALists, build_csa, csa_loss

    cfg = csa_config(**{k: v for k, v in config.items() if k in csa_config()})
    if not cfg["train_features"]:
        raise ValueError("train_features: path of a .npy/.npz with the training split's descriptors is required")
    several = isinstance(cfg["train_features"], (list, tuple))
    files = list(cfg["train_features"]) if several else [cfg["train_features"]]
    whitenings = cfg["whitening"] if isinstance(cfg["whitening"], (list, tuple)) else [cfg["whitening"]] * len(files)
    if len(whitenings) != len(files):
        raise ValueError(f"whitening: {len(whitenings)} entries for {len(files)} train_features files")
    split = _train_split(cfg)["train"]
    labels = split.get("labels", split["cluster"])
    parts = []
    for path, white in zip(files, whitenings):
        X = load_vectors(path)
        if white:
            from .models.whitening import Whitening
            X = Whitening.load(white).apply(X)
        if len(labels) != len(X):
            raise ValueError(f"train_features {path} has {len(X)} rows but the training split {len(labels)} images")
        parts.append(CSALists(X, labels, K=cfg["K"], L=cfg["L"], seed=cfg["seed"] + len(parts)))
    model = build_csa(cfg["L"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"], True,
                      cfg["drop"], cfg["attn_drop"], cfg["drop_path"])

    def dataset(epoch: int):
        for part in parts:
            part.set_epoch(epoch)
        return ConcatDataset(parts) if len(parts) > 1 else parts[0]

    def loss_fn(net, batch):
        aff, positives = batch
        tokens, recon = net(aff)
        return csa_loss(tokens, recon, aff, positives, cfg["temperature"], cfg["alpha"])

    return model, dataset, loss_fn


def _task_options(cfg: dict, defaults: dict, paths: tuple = ("root",)) -> dict:
    """The task options of ``cfg`` (not TrainConfig fields, not ``paths``) for :func:`fit`'s ``task``."""
    skip = set(TrainConfig().to_dict()) | set(paths)
    return {k: cfg[k] for k in defaults if k not in skip}


def train_csa(config: dict):
    """Build :func:`csa_lists` and train it; returns ``(model, history)``. The checkpoint records
    the options and a hash of the training lists' descriptors and labels, so ``resume`` never
    continues a model trained on other lists."""
    import hashlib

    cfg = csa_config(**config)
    model, data, loss_fn = csa_lists(cfg)
    lists = data(0)
    h = hashlib.sha1()
    for part in getattr(lists, "datasets", [lists]):
        h.update(part.x.numpy().tobytes() + part.labels.numpy().tobytes())
    task = dict(_task_options(cfg, CSA_DEFAULTS, ("root", "train_features", "whitening")), lists_sha1=h.hexdigest())
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    return model.eval(), history

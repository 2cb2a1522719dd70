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


# ----------------------------------------------------------------------------------------------
# token: Token (Wu et al. AAAI 2022) trained as a landmark classifier with a margin softmax

TOKEN_DEFAULTS = dict(
    train_set="synth", preset="default", root=None,
    backbone="resnet101", weights=None,  # torchvision weights (paper: ImageNet-pretrained ResNet-101)
    backbone_init=None,        # a GlobalNet / cirtorch checkpoint whose backbone initialises Token's (e.g. 02's GeM)
    train_blocks=5,            # last backbone blocks trained (5: all, as the paper); the others frozen
    dim=1024, tokens=4, heads=8, encoder_layers=1, decoder_layers=2, outputdim=1024,  # the paper's sizes
    drop=0.1, attn_drop=0.1, drop_path=0.1,
    loss="arcface", scale=None, margin=0.2,  # scale None: √outputdim (paper: ArcFace, s = √1024 = 32, m = 0.2)
    image_size=512,            # training images: longer side, padded to square
    augment=True, crop_scale=0.8,  # random crops of [crop_scale, 1] of each side
    images_per_epoch=None,     # a random subset of the training images each epoch (None: all)
    # the released experiment.sh (GLDv2, 4 GPUs): SGD momentum 0.9, lr 0.01, 5 warm-up epochs then decay
    # to 0, wd 1e-4, no clipping, 30 epochs, batch 128, 512-px images
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_epochs=5.0, grad_clip=None,
    epochs=30, batch_size=128,
)


def token_config(**overrides) -> dict:
    """Defaults of :func:`token_classification` + TrainConfig, updated by ``overrides`` (unknown keys rejected)."""
    return _config(TOKEN_DEFAULTS, overrides, "Token")


class LabelledImages(TuplesDataset):
    """Training images with class labels: item ``i`` is ``(image (3, S, S), label)``, the image
    loaded, optionally randomly cropped, resized (longer side S), normalised and padded as in
    :class:`TuplesDataset`. ``indices`` (n,) select the images of ``split``; ``labels`` (n,) int64
    in [0, C)."""

    def __init__(self, split: dict, indices, labels, image_size: int, mean=None, std=None,
                 augment: bool = False, crop_scale: float = 0.8, seed: int = 0):
        import numpy as np

        indices, labels = np.asarray(indices, np.int64), np.asarray(labels, np.int64)
        if indices.ndim != 1 or indices.size == 0 or labels.shape != indices.shape:
            raise ValueError(f"indices and labels must be non-empty (n,) arrays of the same length, got "
                             f"{indices.shape} and {labels.shape}")
        norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
        super().__init__(split, np.stack([indices, indices], 1), image_size, augment=augment,
                         crop_scale=crop_scale, seed=seed, **norm)  # checks split, indices, size, crops
        self.labels = labels

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        i = i % len(self)
        return self.image(int(self.tuples[i, 0]), key=(i, 0)), int(self.labels[i])


def _class_labels(split: dict):
    """Landmark labels of the split's images as 0..C-1 (``labels`` if present, else ``cluster``)."""
    import numpy as np

    raw = np.asarray(split.get("labels", split["cluster"]))
    classes, labels = np.unique(raw, return_inverse=True)
    return labels.astype(np.int64), len(classes)


def token_classification(config: dict):
    """Token trained as a classifier of the training split's landmarks with a margin softmax (ArcFace
    in the paper, or CosFace) and cross-entropy, on single images (Wu et al., AAAI 2022).

    Returns ``(model, data, loss_fn)``; ``data(epoch)`` is a :class:`LabelledImages` of all
    training images, or of ``images_per_epoch`` of them drawn for that epoch (seeded).
    """
    import numpy as np

    from .models.checkpoints import read_checkpoint
    from .models.token import build_token, init_backbone_from_global

    cfg = token_config(**{k: v for k, v in config.items() if k in token_config()})
    init_distributed(cfg["device"])
    split = _train_split(cfg)["train"]
    labels, n_classes = _class_labels(split)
    model = build_token(cfg["backbone"], cfg["dim"], cfg["tokens"], cfg["heads"], cfg["encoder_layers"],
                        cfg["decoder_layers"], cfg["outputdim"], classes=n_classes, loss=cfg["loss"],
                        scale=cfg["scale"], margin=cfg["margin"], drop=cfg["drop"], attn_drop=cfg["attn_drop"],
                        drop_path=cfg["drop_path"], train_blocks=cfg["train_blocks"], weights=cfg["weights"])
    if cfg["backbone_init"]:
        init_backbone_from_global(model, read_checkpoint(cfg["backbone_init"]))
    n, per_epoch = len(labels), cfg["images_per_epoch"]
    if per_epoch is not None and not 1 <= int(per_epoch) <= n:
        raise ValueError(f"images_per_epoch must be in 1..{n} (the training images) or None, got {per_epoch}")

    def data(epoch: int) -> LabelledImages:
        idx = np.arange(n)
        if per_epoch is not None:
            idx = np.sort(np.random.default_rng([cfg["seed"], epoch]).choice(n, int(per_epoch), replace=False))
        ds = LabelledImages(split, idx, labels[idx], cfg["image_size"], model.meta["mean"], model.meta["std"],
                            augment=cfg["augment"], crop_scale=cfg["crop_scale"], seed=cfg["seed"])
        ds.set_epoch(epoch)
        return ds

    def loss_fn(net, batch) -> torch.Tensor:
        images, y = batch
        return torch.nn.functional.cross_entropy(net(images, y), y)

    return model, data, loss_fn


def train_token(config: dict):
    """Build :func:`token_classification` (seeded) and train it; returns ``(model, history)``, the
    model in eval mode. The checkpoint records the options and a hash of the backbone
    initialisation, so ``resume`` never continues another experiment's weights."""
    import hashlib

    from .config import seed_everything

    cfg = token_config(**config)
    seed_everything(cfg["seed"])
    model, data, loss_fn = token_classification(cfg)
    task = _task_options(cfg, TOKEN_DEFAULTS, ("root", "backbone_init"))
    if cfg["backbone_init"]:
        task["backbone_init_sha1"] = hashlib.sha1(Path(cfg["backbone_init"]).read_bytes()).hexdigest()
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    model.meta["trained"] = True
    return model.eval(), history

"""Asymmetric retrieval: a small query network trained against a frozen gallery network's
precomputed descriptors (SSP, Wu et al. IEEE TMM 2023, and the HVS, LCE, AML and
feature-regression baselines)."""

from __future__ import annotations


import numpy as np
import torch

from ..anchors import load_anchors
from ..config import resolve_device, seed_everything
from ..datasets.training import ImageGroups
from ..datasets.tuples import TupleMiner
from ..distributed import init_distributed, sharded_extract
from ..extract import extract_vectors, model_fingerprint
from ..io import fingerprint, load_vectors
from ..losses import get_loss
from ..models import build_query_net, init_projection, load_model, pooled
from ..train import TrainConfig, fit
from .base import load_train_split, make_config, task_options

ASYM_METHODS = ("ssp", "regression", "hvs", "lce", "aml")

ASYM_DEFAULTS = dict(
    method="ssp",              # ssp, regression, hvs, lce, aml: the loss of retrieval.losses
    loss_options=None,         # keyword arguments of that loss (None: its paper defaults, e.g. ssp scale 10 = 1/τ)
    backbone="mobilenet_v2", weights=None, p=3.0,  # query network (SSP paper: MobileNetV2, EfficientNet-B3)
    init=None,                 # a trained global network (.pth) of the same backbone to start from (distillation)
    frozen_bn=None,            # keep the backbone's BatchNorm statistics; None: frozen when starting from weights or init
    head_init=None,            # the projection's start: None, random (the papers); "ridge": the ridge-regression fit of the
    head_ridge=0.1,            # gallery descriptors on the query backbone's own (models.init_projection), with this penalty
    gallery_features=None,     # (N, D) gallery-network descriptors of the training split: .npy, or .npz (extract_vectors_cached)
    anchors=None,              # SSP: the anchors' .npz (retrieval.anchors, 04_build_anchors)
    train_images=None,         # a fixed seeded subset of that many training images (train_subset); None: all.
                               # gallery_features then holds the subset's descriptors, in train_subset order
    train_set="synth", preset="default", root=None,
    image_size=362,            # training images: longer side, padded to square (SSP's SfM script: 362)
    qsize=2000, poolsize=20000, nnum=5, mining_batch_size=32,  # AML tuples per epoch (as the SSP authors' AML)
    # the SSP authors' SfM recipe: SGD, lr 1e-3 x batch / 256, 5 warm-up epochs then decay, wd 1e-6, 10 epochs
    epochs=10, batch_size=64, optimizer="sgd", lr=2.5e-4, momentum=0.9, weight_decay=1e-6, warmup_epochs=5,
)


def train_subset(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Indices (size,) of a seeded random subset of ``n`` training images, sorted (all ``n`` when
    ``size`` is None): the images an asymmetric run with ``train_images=size`` trains on, so that
    the gallery (teacher) descriptors need only be extracted for those."""
    if size is None:
        return np.arange(n)
    if isinstance(size, bool) or int(size) != size or not 1 <= size <= n:
        raise ValueError(f"train_images must be an integer in 1..{n} (the training images) or None, got {size!r}")
    return np.sort(np.random.default_rng([seed, n]).choice(n, int(size), replace=False))


def asym_config(**overrides) -> dict:
    """Defaults of :func:`asym_distill` + TrainConfig, updated by ``overrides`` (unknown keys rejected)."""
    return make_config(ASYM_DEFAULTS, overrides, "asymmetric-training")


def gallery_classifier(features, labels):
    """Class weights (C, D) for a gallery network trained without a classifier (metric learning,
    as here): the L2-normalised mean gallery descriptor of each class, as BCT (Shen et al., CVPR
    2020) builds the old classifier of classes the old model never classified. ``features`` (N, D),
    ``labels`` (N,) in [0, C). Used by the HVS and LCE baselines as the frozen "old" classifier."""
    features, labels = np.asarray(features, np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features (N, D) and labels (N,) expected, got {features.shape} and {labels.shape}")
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("labels must be non-empty class indices in [0, C)")
    C = int(labels.max()) + 1
    sums = np.zeros((C, features.shape[1]))
    np.add.at(sums, labels, features)
    missing = np.flatnonzero(np.bincount(labels, minlength=C) == 0)
    if missing.size:
        raise ValueError(f"classes {missing[:5].tolist()} have no image: labels must be 0..C-1 without gaps")
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def init_query_net(model, path) -> None:
    """Start a query network from a trained global network (:func:`~retrieval.models.load_model`)
    of the same backbone: its backbone and GeM weights are copied and the projection set to the
    identity (when square), so the untrained query network reproduces the global network exactly —
    the "student before" of a distillation."""
    src = load_model(path, kind="global")
    if src.meta.get("backbone") != model.meta.get("backbone"):
        raise ValueError(f"init {path}: backbone {src.meta.get('backbone')!r} differs from the query network's "
                         f"{model.meta.get('backbone')!r}")
    if getattr(src, "whiten", None) is not None:
        raise ValueError(f"init {path}: a network with an FC whitening layer cannot start a query network")
    model.net.features.load_state_dict(src.features.state_dict())
    model.net.pool.load_state_dict(src.pool.state_dict())
    proj = model.net.whiten
    if proj is not None and proj.weight.shape[0] == proj.weight.shape[1]:
        with torch.no_grad():
            proj.weight.copy_(torch.eye(proj.weight.shape[0]))
            proj.bias.zero_()


_POOLED: dict = {}  # (backbone+pool fingerprint, size, paths) -> (N, D_in): shared by the methods of one process
_RESIZED: dict = {}  # (paths, size) -> {split index: resized uint8 image}: shared by the methods of one process


def _resized_images(paths: list, size: int) -> dict:
    """The :class:`~retrieval.datasets.training.ImageGroups` cache of the training images at ``size``, kept
    for the next method of this process (the same images, decoded and resized once; the last split only)."""
    key = (hash(tuple(map(str, paths))), int(size))
    if key not in _RESIZED:
        _RESIZED.clear()
        _RESIZED[key] = {}
    return _RESIZED[key]


def _pooled_train(model, paths: list, size: int, device) -> np.ndarray:
    """The query network's pooled descriptors (before the projection) of the training images at
    ``size`` (test-time resizing), for ``head_init='ridge'``; computed once per process for every
    method starting from the same backbone weights."""
    trunk = torch.nn.ModuleList([model.net.features, model.net.pool])
    key = (model_fingerprint(trunk), size, hash(tuple(map(str, paths))))
    if key not in _POOLED:
        net = pooled(model)
        _POOLED.clear()
        _POOLED[key] = sharded_extract(
            lambda p: extract_vectors(net, p, image_size=size, device=device, desc="ridge init"), paths)
    return _POOLED[key]


def asym_distill(config: dict):
    """A query network trained against the frozen gallery network's precomputed descriptors of the
    training split (``gallery_features``) with the loss ``method`` (:data:`ASYM_METHODS`):

    * ``ssp``: structure similarity to the PQ ``anchors`` (Wu et al.);
    * ``regression``: ‖q − g‖² to the gallery descriptor of the same image;
    * ``hvs`` / ``lce``: a new ArcFace head + the gallery's frozen classifier
      (:func:`gallery_classifier`; LCE through a residual transformation);
    * ``aml``: tuples mined every epoch (query-network queries against gallery-network descriptors
      of a random pool), asymmetric contrastive + regression (Budnik & Avrithis).

    The query network (:func:`~retrieval.models.build_query_net`) projects to the gallery
    dimension. Returns ``(model, data, loss_fn)`` for :func:`~retrieval.train.fit`.
    """
    cfg = asym_config(**{k: v for k, v in config.items() if k in asym_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    method = cfg["method"]
    if method not in ASYM_METHODS:
        raise ValueError(f"method={method!r}: expected one of {ASYM_METHODS}")
    if cfg["gallery_features"] is None:
        raise ValueError("gallery_features: path of the gallery network's descriptors of the training split "
                         "(.npy, or .npz from extract_vectors_cached) is required")
    init_distributed(cfg["device"])  # under torchrun: one rank renders the data, the others wait
    G = np.ascontiguousarray(load_vectors(cfg["gallery_features"]), dtype=np.float32)
    split = load_train_split(cfg)["train"]
    subset = train_subset(len(split["paths"]), cfg["train_images"], cfg["seed"])
    if G.ndim != 2 or len(G) != len(subset):
        raise ValueError(f"gallery_features {cfg['gallery_features']} holds {G.shape} descriptors but the "
                         f"training split has {len(split['paths'])} images"
                         + (f" (train_images={cfg['train_images']} of them used)" if cfg["train_images"] else ""))
    if cfg["train_images"] is not None:
        if method in ("aml", "hvs", "lce"):  # AML mines the whole split; HVS/LCE classify with every image's class
            raise ValueError(f"train_images: {method} needs the gallery descriptors of every training image; use None")
        full = np.zeros((len(split["paths"]), G.shape[1]), np.float32)  # rows of unused images stay 0 (never read)
        full[subset] = G
        G = full
    labels = np.unique(np.asarray(split.get("labels", split["cluster"])), return_inverse=True)[1].ravel()
    D, device = G.shape[1], resolve_device(cfg["device"])
    model = build_query_net(cfg["backbone"], D, classes=int(labels.max()) + 1 if method in ("hvs", "lce") else 0,
                            transform=method == "lce", p=cfg["p"], weights=cfg["weights"])
    model.meta["name"] = f"{method}-{cfg['backbone']}"
    if cfg["init"]:
        init_query_net(model, cfg["init"])
    if cfg["head_init"] == "ridge":
        if cfg["init"]:
            raise ValueError("head_init='ridge' and init: the projection would be fitted over the init's identity; use one")
        X = _pooled_train(model, [split["paths"][i] for i in subset], int(cfg["image_size"]), device)
        init_projection(model, X, G[subset], cfg["head_ridge"])
    elif cfg["head_init"] is not None:
        raise ValueError(f"head_init={cfg['head_init']!r}: expected None (random) or 'ridge'")
    # as in global training: pretrained statistics stay (small batches of one split would spoil them)
    model.net.frozen_bn = bool(cfg["weights"] is not None or cfg["init"] is not None
                               if cfg["frozen_bn"] is None else cfg["frozen_bn"])
    options = dict(cfg["loss_options"] or {})
    if method == "ssp":
        if cfg["anchors"] is None:
            raise ValueError("anchors: SSP needs the anchors' .npz (retrieval.anchors.build_anchors, 04_build_anchors)")
        anchors = load_anchors(cfg["anchors"])
        if anchors.dim != D:
            raise ValueError(f"anchors {cfg['anchors']} are {anchors.dim}-D but the gallery descriptors {D}-D")
        options["anchors"] = torch.from_numpy(anchors.anchors).to(device)
    loss = get_loss(method, **options)
    gallery = torch.from_numpy(G).to(device)
    targets = torch.from_numpy(labels).to(device)
    old_weight = torch.from_numpy(gallery_classifier(G, labels)).to(device) if method in ("hvs", "lce") else None
    size, mean, std = int(cfg["image_size"]), model.meta["mean"], model.meta["std"]

    if method == "aml":
        miner = TupleMiner(split, qsize=cfg["qsize"], poolsize=cfg["poolsize"], nnum=cfg["nnum"],
                           seed=cfg["seed"], mode="hard")
        index = {p: i for i, p in enumerate(split["paths"])}
        cache = _resized_images(split["paths"], size)  # resized images, shared by the epochs and the methods

        def describe(paths):
            return extract_vectors(model, paths, image_size=size, batch_size=cfg["mining_batch_size"],
                                   device=device, progress=False)

        def data(epoch: int) -> ImageGroups:
            tuples = miner.mine(epoch, lambda paths: sharded_extract(describe, paths),
                                describe_pool=lambda paths: G[[index[p] for p in paths]])
            return ImageGroups(split, tuples, size, mean, std, cache=cache)
    else:
        data = ImageGroups(split, subset, size, mean, std, cache=_resized_images(split["paths"], size))

    def loss_fn(net, batch) -> torch.Tensor:
        images, idx = batch
        B, T = idx.shape
        x, i = images.flatten(0, 1), idx.flatten()
        if method in ("ssp", "regression"):
            return loss(net(x), gallery[i])
        if method == "aml":
            return loss(net(x).view(B, T, -1), gallery[i].view(B, T, -1))
        out = net(x, outputs=True)
        if method == "hvs":
            return loss(out["embedding"], targets[i], weight=out["weight"], old_weight=old_weight)
        return loss(out["embedding"], targets[i], weight=out["weight"], old_weight=old_weight,
                    transformed=out["descriptor"], transformed_weight=out["weight_transformed"])

    return model, data, loss_fn


def train_asym(config: dict):
    """Build :func:`asym_distill` (seeded) and train it; returns ``(model, history)``, the model in
    eval mode. The checkpoint records the options and hashes of the gallery descriptors and the
    anchors, so ``resume`` never continues a model trained against other ones."""
    cfg = asym_config(**config)
    seed_everything(cfg["seed"])
    model, data, loss_fn = asym_distill(cfg)
    hashed = [np.ascontiguousarray(load_vectors(cfg["gallery_features"]), np.float32)]
    if cfg["method"] == "ssp":
        hashed.append(load_anchors(cfg["anchors"]).centroids)
    task = dict(task_options(cfg, ASYM_DEFAULTS, ("root", "gallery_features", "anchors")), data_sha1=fingerprint(*hashed))
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    model.meta["trained"] = True
    return model.eval(), history

"""Training tasks: ``(model, data, loss_fn)`` builders for :func:`retrieval.train.fit`.

Each task takes one config dict (TrainConfig fields plus task options), so the same JSON runs in a
notebook or under torchrun::

    torchrun --standalone --nproc_per_node=2 -m retrieval.train \
        --task retrieval.tasks:global_tuples --config cfg.json
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import data_dir, resolve_device, seed_everything
from .datasets import dataset_name, generate
from .datasets.tuples import TupleMiner, TuplesDataset, load_sfm
from .extract import extract_vectors
from .losses import get_loss
from .models import build_global_net
from .train import TrainConfig, barrier, fit, init_distributed, is_main, sharded_extract, world

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
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    init_distributed(cfg["device"])  # under torchrun: one rank renders the data, the others wait
    model = build_global_net(cfg["backbone"], cfg["pooling"], whitening=cfg["whitening"], weights=cfg["weights"])
    # cirtorch freezes BatchNorm always (it always starts from ImageNet); from random init the
    # statistics must be learned, hence the default
    model.frozen_bn = bool(cfg["weights"] is not None if cfg["frozen_bn"] is None else cfg["frozen_bn"])
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
    if model.meta.get("p") is not None:  # the learned GeM p, as the reloaded checkpoint has it (feature caches compare meta)
        model.meta["p"] = float(model.pool.p.detach().reshape(-1)[0])
    return model, history


CSA_DEFAULTS = dict(
    train_features=None,        # (N, D) descriptors of the training split (.npy, or .npz from extract_cached); a list: augmented
    whitening=None,             # a saved Whitening (.npz) applied to them first (or a list, one per train_features)
    train_set="synth", preset="default", root=None,
    # K: candidates per list. The authors' --topk 512 counts the query itself (query + 511 candidates),
    # so K = 511 matches it; L = 512 anchors counts the query in both.
    K=511, L=512, dim=768, depth=2, heads=12, mlp_ratio=4.0, drop=0.1, attn_drop=0.1, drop_path=0.1,
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
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
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
# asymmetric retrieval: a small query network trained against a frozen gallery network
# (SSP, Wu et al. IEEE TMM 2023, and the HVS, LCE, AML and feature-regression baselines)

import numpy as np  # noqa: E402  (imports of the asymmetric section)

from .datasets.images import load_image, resize_longer, thumbnail_size  # noqa: E402
from .datasets.tuples import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

ASYM_METHODS = ("ssp", "regression", "hvs", "lce", "aml")

ASYM_DEFAULTS = dict(
    method="ssp",              # ssp, regression, hvs, lce, aml: the loss of retrieval.losses
    loss_options=None,         # keyword arguments of that loss (None: its paper defaults, e.g. ssp scale 10 = 1/τ)
    backbone="mobilenet_v2", weights=None, p=3.0,  # query network (SSP paper: MobileNetV2, EfficientNet-B3)
    init=None,                 # a trained global network (.pth) of the same backbone to start from (distillation)
    frozen_bn=None,            # keep the backbone's BatchNorm statistics; None: frozen when starting from weights or init
    head_init=None,            # the projection's start: None, random (the papers); "ridge": the ridge-regression fit of the
    head_ridge=0.1,            # gallery descriptors on the query backbone's own (models.init_projection), with this penalty
    gallery_features=None,     # (N, D) gallery-network descriptors of the training split: .npy, or .npz (extract_cached)
    anchors=None,              # SSP: the anchors' .npz (retrieval.anchors, 04_build_anchors)
    train_images=None,         # a fixed seeded subset of that many training images (train_subset); None: all.
                               # gallery_features then holds the subset's descriptors, in train_subset order
    train_set="synth", preset="default", root=None,
    image_size=362,            # training images: longer side, padded to square (SSP's SfM script: 362)
    qsize=2000, poolsize=20000, nnum=5, mining_batch_size=32,  # AML tuples per epoch (as the SSP authors' AML)
    # the SSP authors' SfM recipe: SGD, lr 1e-3 x batch / 256, 5 warm-up epochs then decay, wd 1e-6, 10 epochs
    epochs=10, batch_size=64, optimizer="sgd", lr=2.5e-4, momentum=0.9, weight_decay=1e-6, warmup_epochs=5,
)


def train_subset(n: int, size: int | None, seed: int = 0) -> "np.ndarray":
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
    return _config(ASYM_DEFAULTS, overrides, "asymmetric-training")


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
        from PIL import Image

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


def init_query_net(model, path) -> None:
    """Start a query network from a trained global network (:func:`~retrieval.models.load_network`)
    of the same backbone: its backbone and GeM weights are copied and the projection set to the
    identity (when square), so the untrained query network reproduces the global network exactly —
    the "student before" of a distillation."""
    from .models import load_network

    src = load_network(path)
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


def _pooled_train(model, paths: list, size: int, device) -> "np.ndarray":
    """The query network's pooled descriptors (before the projection) of the training images at
    ``size`` (test-time resizing), for ``head_init='ridge'``; computed once per process for every
    method starting from the same backbone weights."""
    from .extract import model_fingerprint
    from .models import pooled

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

    from .anchors import load_anchors
    from .models import build_query_net, init_projection

    cfg = asym_config(**{k: v for k, v in config.items() if k in asym_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    method = cfg["method"]
    if method not in ASYM_METHODS:
        raise ValueError(f"method={method!r}: expected one of {ASYM_METHODS}")
    if cfg["gallery_features"] is None:
        raise ValueError("gallery_features: path of the gallery network's descriptors of the training split "
                         "(.npy, or .npz from extract_cached) is required")
    init_distributed(cfg["device"])  # under torchrun: one rank renders the data, the others wait
    G = np.ascontiguousarray(load_vectors(cfg["gallery_features"]), dtype=np.float32)
    split = _train_split(cfg)["train"]
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
        cache: dict = {}  # resized images, shared by the epochs' tuple datasets

        def describe(paths):
            return extract_vectors(model, paths, image_size=size, batch_size=cfg["mining_batch_size"],
                                   device=device, progress=False)

        def data(epoch: int) -> ImageGroups:
            tuples = miner.mine(epoch, lambda paths: sharded_extract(describe, paths),
                                describe_pool=lambda paths: G[[index[p] for p in paths]])
            return ImageGroups(split, tuples, size, mean, std, cache=cache)
    else:
        data = ImageGroups(split, subset, size, mean, std)

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
    import hashlib


    from .anchors import load_anchors
    from .config import seed_everything

    cfg = asym_config(**config)
    seed_everything(cfg["seed"])
    model, data, loss_fn = asym_distill(cfg)
    h = hashlib.sha1(np.ascontiguousarray(load_vectors(cfg["gallery_features"]), np.float32).tobytes())
    if cfg["method"] == "ssp":
        h.update(load_anchors(cfg["anchors"]).centroids.tobytes())
    task = dict(_task_options(cfg, ASYM_DEFAULTS, ("root", "gallery_features", "anchors")), data_sha1=h.hexdigest())
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    model.meta["trained"] = True
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
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
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


# ----------------------------------------------------------------------------------------------
# projection: dimension reduction of fixed descriptors by metric learning (deep-retrieval study)

PROJECTION_DEFAULTS = dict(
    train_features=None,       # (N, D) descriptors of the training split (.npy / extract_cached .npz)
    train_set="synth", preset="default", root=None,
    dim=64, loss="lifted", margin=1.0,  # "lifted" (Oh Song et al. 2016, α = 1) or "pairs" (in-batch contrastive)
    init="pca",                # "pca": start from PCA to `dim` (mean removed); "random"
    epochs=30, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=1e-4, drop_last=True,
)


def projection_config(**overrides) -> dict:
    """Defaults of :func:`projection_pairs` + TrainConfig, updated by ``overrides``."""
    return _config(PROJECTION_DEFAULTS, overrides, "projection")


def projection_pairs(config: dict):
    """A linear projection D → ``dim`` + L2 of fixed descriptors, trained with an in-batch
    metric-learning loss over landmark labels (``lifted`` or ``pairs``). Returns
    ``(model, data, loss_fn)``; ``model`` maps (B, D) → (B, dim) L2-normalised."""
    import numpy as np
    from torch import nn
    from torch.utils.data import TensorDataset

    from .models.pooling import L2N
    from .models.whitening import learn_pca_whitening

    cfg = projection_config(**{k: v for k, v in config.items() if k in projection_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    if not cfg["train_features"]:
        raise ValueError("train_features: path of the training split's descriptors is required")
    if cfg["init"] not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random', got {cfg['init']!r}")
    X = np.asarray(load_vectors(cfg["train_features"]), np.float32)
    split = _train_split(cfg)["train"]
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
    import hashlib

    cfg = projection_config(**config)
    model, data, loss_fn = projection_pairs(cfg)
    task = dict(_task_options(cfg, PROJECTION_DEFAULTS, ("root", "train_features")),
                data_sha1=hashlib.sha1(data.tensors[0].numpy().tobytes()).hexdigest())
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    return model.eval(), history

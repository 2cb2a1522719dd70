"""CSA re-ranking training (Ouyang et al., NeurIPS 2021) on ranked lists of the training split."""

from __future__ import annotations


from torch.utils.data import ConcatDataset

from ..config import seed_everything
from ..datasets.training import CSALists
from ..io import fingerprint, load_vectors
from ..models.csa import build_csa, csa_loss
from ..models.whitening import Whitening
from ..train import TrainConfig, fit
from .base import load_train_split, make_config, task_options

CSA_DEFAULTS = dict(
    train_features=None,        # (N, D) descriptors of the training split (.npy, or .npz from extract_vectors_cached); a list: augmented
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
    return make_config(CSA_DEFAULTS, overrides, "CSA")


def csa_lists(config: dict):
    """CSA training (Ouyang et al., NeurIPS 2021) on the training split's ranked lists: every training
    image is a query, positives share its landmark label. Returns ``(model, data, loss_fn)``;
    ``data(epoch)`` is one :class:`~retrieval.datasets.training.CSALists`, or their concatenation when
    ``train_features`` lists several extractors' descriptors (the paper's "augmented" training:
    the same images ranked by each extractor; ``whitening`` then a list of the same length, items
    may be None)."""
    cfg = csa_config(**{k: v for k, v in config.items() if k in csa_config()})
    seed_everything(cfg["seed"])  # the model's initial weights (also under torchrun / the CLI)
    if not cfg["train_features"]:
        raise ValueError("train_features: path of a .npy/.npz with the training split's descriptors is required")
    several = isinstance(cfg["train_features"], (list, tuple))
    files = list(cfg["train_features"]) if several else [cfg["train_features"]]
    whitenings = cfg["whitening"] if isinstance(cfg["whitening"], (list, tuple)) else [cfg["whitening"]] * len(files)
    if len(whitenings) != len(files):
        raise ValueError(f"whitening: {len(whitenings)} entries for {len(files)} train_features files")
    split = load_train_split(cfg)["train"]
    labels = split.get("labels", split["cluster"])
    parts = []
    for path, white in zip(files, whitenings):
        X = load_vectors(path)
        if white:
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


def train_csa(config: dict):
    """Build :func:`csa_lists` and train it; returns ``(model, history)``. The checkpoint records
    the options and a hash of the training lists' descriptors and labels, so ``resume`` never
    continues a model trained on other lists."""
    cfg = csa_config(**config)
    model, data, loss_fn = csa_lists(cfg)
    lists = data(0)
    lists_sha1 = fingerprint(*(a for part in getattr(lists, "datasets", [lists]) for a in (part.x, part.labels)))
    task = dict(task_options(cfg, CSA_DEFAULTS, ("root", "train_features", "whitening")), lists_sha1=lists_sha1)
    history = fit(model, data, loss_fn, TrainConfig.from_dict(cfg), task=task)
    return model.eval(), history

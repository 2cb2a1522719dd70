"""Published network checkpoints (cnnimageretrieval-pytorch layout), ImageNet weights (torchvision's
and cirtorch's caffe-converted features).

A cirtorch checkpoint is a ``torch.save``d dict ``{"state_dict": ..., "meta": ...}``:

* ``state_dict`` keys ``features.<i>.…`` (the torchvision backbone cut before its global pooling),
  ``pool.p`` (GeM, shape (1,)), ``whiten.weight`` / ``whiten.bias`` (FC whitening, optional);
  other variants add ``lwhiten.*`` (local whitening) or ``pool.rpool.*`` / ``pool.whiten.*``
  (regional pooling), which :class:`~retrieval.models.GlobalNet` does not implement.
* ``meta``: ``architecture``, ``pooling``, ``local_whitening``, ``regional``, ``whitening``,
  ``mean``, ``std``, ``outputdim`` (the two ``retrievalSfM120k-*`` files may also carry ``Lw``,
  a post-processing whitening; it is not kept).

Nothing is downloaded here: files are expected in :func:`networks_dir` (published networks; the caffe
features under ``networks/imagenet/``) or the torch hub cache (torchvision weights). The hash in a
filename follows the torch hub convention (``name-<first hex digits of the file's sha256>.pth``).
torchvision checks its own prefixes on download; cirtorch loads its files without a hash check, so
for those the convention is assumed, not confirmed upstream — ``verify=False`` skips the check.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

from ..config import data_dir
from ..io import atomic_write_bytes, file_hash
from .backbones import BACKBONES
from .global_net import GlobalNet, build_global_net
from .pooling import POOLINGS

RTC18 = ("Radenović F., Tolias G., Chum O., \"Fine-tuning CNN Image Retrieval with No Human "
         "Annotation\", TPAMI 2018")
_CIRTORCH = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks"


class PublishedNet(NamedTuple):
    """One published network: where it lives and what it is.

    ``reported``: multi-scale mAP (%) from the cirtorch README — for the ``retrievalSfM120k-*``
    networks with post-processing whitening learned on retrieval-SfM-120k, for the ``-w`` ones
    as is (whitening learned end-to-end).
    """

    url: str
    sha256_prefix: str
    backbone: str
    pooling: str
    whitening: bool
    outputdim: int
    train_set: str
    citation: str
    reported: dict

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _pub(folder, stem, prefix, backbone, whitening, train_set, reported):
    return PublishedNet(f"{_CIRTORCH}/{folder}/{stem}-{prefix}.pth", prefix, backbone, "gem", whitening,
                        BACKBONES[backbone][1], train_set, RTC18, reported)


def _rep(*values, keys=("roxford5k_M", "rparis6k_M", "roxford5k_H", "rparis6k_H")):
    return dict(zip(keys, values))


_OLD_KEYS = ("oxford5k", "paris6k", "roxford5k_M", "rparis6k_M", "roxford5k_H", "rparis6k_H")

# Source: filipradenovic/cnnimageretrieval-pytorch, cirtorch/examples/test.py (PRETRAINED) and
# cirtorch/examples/test_e2e.py; reported mAP from its README.md.
PUBLISHED: dict[str, PublishedNet] = {
    "retrievalSfM120k-vgg16-gem": _pub(
        "retrieval-SfM-120k", "retrievalSfM120k-vgg16-gem", "b4dcdc6", "vgg16", False,
        "retrieval-SfM-120k", _rep(87.3, 87.8, 60.9, 69.3, 32.9, 44.2, keys=_OLD_KEYS)),
    "retrievalSfM120k-resnet101-gem": _pub(
        "retrieval-SfM-120k", "retrievalSfM120k-resnet101-gem", "b80fb85", "resnet101", False,
        "retrieval-SfM-120k", _rep(88.2, 92.5, 65.4, 76.7, 40.1, 55.2, keys=_OLD_KEYS)),
    "rSfM120k-tl-resnet50-gem-w": _pub(
        "retrieval-SfM-120k", "rSfM120k-tl-resnet50-gem-w", "97bf910", "resnet50", True,
        "retrieval-SfM-120k", _rep(64.7, 76.3, 39.0, 54.9)),
    "rSfM120k-tl-resnet101-gem-w": _pub(
        "retrieval-SfM-120k", "rSfM120k-tl-resnet101-gem-w", "a155e54", "resnet101", True,
        "retrieval-SfM-120k", _rep(67.8, 77.6, 41.7, 56.3)),
    "rSfM120k-tl-resnet152-gem-w": _pub(
        "retrieval-SfM-120k", "rSfM120k-tl-resnet152-gem-w", "f39cada", "resnet152", True,
        "retrieval-SfM-120k", _rep(68.8, 78.0, 41.3, 57.2)),
    "gl18-tl-resnet50-gem-w": _pub(
        "gl18", "gl18-tl-resnet50-gem-w", "83fdc30", "resnet50", True,
        "google-landmarks-2018", _rep(63.6, 78.0, 40.9, 57.5)),
    "gl18-tl-resnet101-gem-w": _pub(
        "gl18", "gl18-tl-resnet101-gem-w", "a4d43db", "resnet101", True,
        "google-landmarks-2018", _rep(67.3, 80.6, 44.3, 61.5)),
    "gl18-tl-resnet152-gem-w": _pub(
        "gl18", "gl18-tl-resnet152-gem-w", "21278d5", "resnet152", True,
        "google-landmarks-2018", _rep(68.7, 79.7, 44.2, 60.3)),
}


class TorchvisionWeights(NamedTuple):
    url: str
    sha256_prefix: str
    weights: str = "IMAGENET1K_V1"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_TV = "https://download.pytorch.org/models"
# Source: torchvision 0.29 ``<Arch>_Weights.IMAGENET1K_V1.url``. cirtorch starts from these only for
# architectures without caffe features (ResNet-18/34 and others); its published VGG16 / ResNet-50/101/152
# networks started from the caffe-converted backbones of :data:`CAFFE_FEATURES` instead.
TORCHVISION_WEIGHTS: dict[str, TorchvisionWeights] = {
    "resnet18": TorchvisionWeights(f"{_TV}/resnet18-f37072fd.pth", "f37072fd"),
    "resnet34": TorchvisionWeights(f"{_TV}/resnet34-b627a593.pth", "b627a593"),
    "resnet50": TorchvisionWeights(f"{_TV}/resnet50-0676ba61.pth", "0676ba61"),
    "resnet101": TorchvisionWeights(f"{_TV}/resnet101-63fe2227.pth", "63fe2227"),
    "resnet152": TorchvisionWeights(f"{_TV}/resnet152-394f9c45.pth", "394f9c45"),
    "vgg16": TorchvisionWeights(f"{_TV}/vgg16-397923af.pth", "397923af"),
    # query networks of asymmetric retrieval (Wu et al., SSP)
    "mobilenet_v2": TorchvisionWeights(f"{_TV}/mobilenet_v2-b0353104.pth", "b0353104"),
    "mobilenet_v3_small": TorchvisionWeights(f"{_TV}/mobilenet_v3_small-047dcff4.pth", "047dcff4"),
    "mobilenet_v3_large": TorchvisionWeights(f"{_TV}/mobilenet_v3_large-8738ca79.pth", "8738ca79"),
    "efficientnet_b0": TorchvisionWeights(f"{_TV}/efficientnet_b0_rwightman-7f5810bc.pth", "7f5810bc"),
    "efficientnet_b1": TorchvisionWeights(f"{_TV}/efficientnet_b1_rwightman-bac287d4.pth", "bac287d4"),
    "efficientnet_b2": TorchvisionWeights(f"{_TV}/efficientnet_b2_rwightman-c35c1473.pth", "c35c1473"),
    "efficientnet_b3": TorchvisionWeights(f"{_TV}/efficientnet_b3_rwightman-b3899882.pth", "b3899882"),
    "shufflenet_v2_x0_5": TorchvisionWeights(f"{_TV}/shufflenetv2_x0.5-f707e7126e.pth", "f707e7126e"),
    "shufflenet_v2_x1_0": TorchvisionWeights(f"{_TV}/shufflenetv2_x1-5666bf0f80.pth", "5666bf0f80"),
}

class CaffeFeatures(NamedTuple):
    """cirtorch's ImageNet backbone converted from caffe: a state dict of its ``features``
    ``nn.Sequential`` (ResNet: ``0.weight`` … ``7.2.bn3.*``; VGG16: the convolutions without the last
    max-pool), used with the same mean/std as the torchvision weights."""

    url: str
    sha256_prefix: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_CAFFE = f"{_CIRTORCH}/imagenet"
# Source: cnnimageretrieval-pytorch cirtorch/networks/imageretrievalnet.py FEATURES ("for some models,
# we have imported features (convolutions) from caffe because the image retrieval performance is
# higher for them"); init_network loads them into ``net.features``. The hex in each name is taken as
# a sha256 prefix (torch hub convention; cirtorch's load_url does not check it).
CAFFE_FEATURES: dict[str, CaffeFeatures] = {
    "vgg16": CaffeFeatures(f"{_CAFFE}/imagenet-caffe-vgg16-features-d369c8e.pth", "d369c8e"),
    "resnet50": CaffeFeatures(f"{_CAFFE}/imagenet-caffe-resnet50-features-ac468af.pth", "ac468af"),
    "resnet101": CaffeFeatures(f"{_CAFFE}/imagenet-caffe-resnet101-features-10a101d.pth", "10a101d"),
    "resnet152": CaffeFeatures(f"{_CAFFE}/imagenet-caffe-resnet152-features-1011020.pth", "1011020"),
}

# meta keys of a published checkpoint, in cirtorch's order
CIRTORCH_META_KEYS = ("architecture", "local_whitening", "pooling", "regional", "whitening",
                      "mean", "std", "outputdim")
_HEX = re.compile(r"^[0-9a-f]+$")


# --------------------------------------------------------------------------- paths and hashes
def networks_dir() -> Path:
    """``data_dir()/networks``: where published networks are expected."""
    return data_dir() / "networks"


def _published(name: str) -> PublishedNet:
    if name not in PUBLISHED:
        raise ValueError(f"unknown published network {name!r}; known: {', '.join(sorted(PUBLISHED))}")
    return PUBLISHED[name]


def published_path(name: str) -> Path:
    """Where the published network ``name`` is expected: ``networks_dir()/<filename from its URL>``."""
    return networks_dir() / _published(name).filename


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    return file_hash(path, "sha256")


def verify_file(path: str | os.PathLike, sha256_prefix: str) -> str:
    """Check that the file's sha256 starts with ``sha256_prefix`` (a prefix or the full hash);
    returns the full hex digest. ValueError naming the file and both hashes on mismatch."""
    path = Path(path)
    prefix = sha256_prefix.strip().lower()
    if not prefix or not _HEX.match(prefix):
        raise ValueError(f"sha256 prefix must be hex digits, got {sha256_prefix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(f"{path}: sha256 mismatch: expected a hash starting with {prefix}, got {digest} "
                         "(file corrupt, truncated or a different version)")
    return digest


def read_checkpoint(path: str | os.PathLike, trusted: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``; a file holding other objects (e.g. numpy
    arrays) is unpickled in full only when ``trusted`` (its hash was verified), else ValueError."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not trusted:
                raise ValueError(f"{path}: holds objects other than tensors and plain containers; it is "
                                 "loaded in full (arbitrary unpickling) only once its hash is verified") from e
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # truncated, not a torch file
        raise ValueError(f"{path}: cannot read the checkpoint, truncated or not a torch file "
                         f"({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- loading
def _strip_prefix(sd: dict) -> dict:
    """Keys saved from ``nn.DataParallel`` (``module.…``) → plain keys."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _unsupported(meta: Mapping, sd: Mapping) -> list[str]:
    parts = []
    if meta.get("local_whitening") or any(k.startswith("lwhiten.") for k in sd):
        parts.append("local whitening (meta local_whitening / lwhiten.* weights)")
    if meta.get("regional") or any(k.startswith(("pool.rpool.", "pool.whiten.")) for k in sd):
        parts.append("regional pooling (meta regional / pool.rpool.* weights)")
    if meta["architecture"] not in BACKBONES:
        parts.append(f"architecture {meta['architecture']!r} (supported: {sorted(BACKBONES)})")
    if meta["pooling"] not in POOLINGS:
        parts.append(f"pooling {meta['pooling']!r} (supported: {sorted(POOLINGS)})")
    p = sd.get("pool.p")
    if meta["pooling"] == "gem" and p is not None and p.numel() != 1:
        parts.append(f"GeM with one p per channel (pool.p of shape {tuple(p.shape)})")
    return parts


def _check_fit(sd: Mapping, expected: Mapping, what: str, why: str = ", as its meta says") -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def show(items):
            return f"{len(items)} (e.g. {', '.join(items[:3])})" if items else "0"
        raise ValueError(f"checkpoint weights do not fit {what}{why}: missing {show(missing)}; "
                         f"unexpected {show(unexpected)}; wrong shape {show(shapes)}")


def load_checkpoint_dict(ckpt: Mapping, name: str | None = None) -> GlobalNet:
    """A :class:`GlobalNet` from a cirtorch-layout checkpoint dict, its weights loaded strictly.

    Explicit key mapping: a ``module.`` prefix is dropped, and BatchNorm ``num_batches_tracked``
    buffers absent from old (PyTorch < 0.4.1) files are set to 0. NotImplementedError for parts
    GlobalNet lacks (local whitening, regional pooling, other backbones/poolings); ValueError when
    the weights do not fit the network the meta describes. ``meta`` gets the checkpoint's mean,
    std and outputdim, ``trained`` (True unless the file says otherwise) and ``name`` (when given
    or stored).
    """
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise ValueError("not a cirtorch checkpoint: expected a dict with 'state_dict' and 'meta'")
    meta, sd = ckpt["meta"], _strip_prefix(dict(ckpt["state_dict"]))
    absent = [k for k in ("architecture", "pooling", "mean", "std") if k not in meta]
    if absent:
        raise ValueError(f"checkpoint meta lacks {absent} (has {sorted(meta)})")
    parts = _unsupported(meta, sd)
    if parts:
        raise NotImplementedError(f"checkpoint uses parts GlobalNet does not implement: {'; '.join(parts)}")

    arch, pooling = meta["architecture"], meta["pooling"]
    dim = BACKBONES[arch][1]
    what = f"a {arch} + {pooling} network"
    whitening: bool | int = False
    if bool(meta.get("whitening", False)) != ("whiten.weight" in sd):
        raise ValueError(f"checkpoint meta whitening={meta.get('whitening')} but whiten.weight is "
                         f"{'present' if 'whiten.weight' in sd else 'absent'}")
    if "whiten.weight" in sd:
        out, inp = sd["whiten.weight"].shape
        if inp != dim:
            raise ValueError(f"checkpoint whiten.weight takes {inp}-D input but {arch} gives {dim}-D "
                             f"descriptors: the weights are not {what}, as its meta says")
        whitening = True if out == dim else int(out)
        what += " with whitening"
    p = float(sd["pool.p"].reshape(-1)[0]) if pooling == "gem" and "pool.p" in sd else 3.0

    net = build_global_net(arch, pooling, p=p, learn_p=True, whitening=whitening, weights=None)
    expected = net.state_dict()
    for k in expected:  # old files: no BatchNorm batch counter
        if k.endswith(".num_batches_tracked") and k not in sd and k[:-19] + "running_mean" in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    _check_fit(sd, expected, what)
    net.load_state_dict(sd, strict=True)

    outputdim = int(net.meta["outputdim"])
    if meta.get("outputdim") is not None and int(meta["outputdim"]) != outputdim:
        raise ValueError(f"checkpoint meta outputdim={meta['outputdim']} but its weights give {outputdim}")
    name = name if name is not None else meta.get("name")
    net.meta.update(mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]),
                    outputdim=outputdim, trained=bool(meta.get("trained", True)),
                    weights=name if name is not None else meta.get("weights"),
                    p=p if pooling == "gem" else None)
    if name is not None:
        net.meta["name"] = name
    return net.eval()


def load_published(name: str, path: str | os.PathLike | None = None, verify: bool = True) -> GlobalNet:
    """The published network ``name`` (see :data:`PUBLISHED`) from ``path`` (default
    :func:`published_path`), its file checked against the hash in its filename unless ``verify``
    is False. FileNotFoundError (with the URL) when the file is absent; ValueError when the file is
    a different network than the table says."""
    entry = _published(name)
    path = Path(path) if path is not None else published_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"published network {name!r} not found: download it from {entry.url} "
                                f"to {path}")
    if verify:
        verify_file(path, entry.sha256_prefix)
    net = load_checkpoint_dict(read_checkpoint(path, trusted=verify), name=name)
    got = (net.meta["backbone"], net.meta["pooling"], bool(net.meta["whitening"]), net.meta["outputdim"])
    want = (entry.backbone, entry.pooling, entry.whitening, entry.outputdim)
    if got != want:
        raise ValueError(f"{path}: holds a (backbone, pooling, whitening, outputdim)={got} network, "
                         f"but {name!r} is {want}")
    return net


# --------------------------------------------------------------------------- saving
def save_cirtorch_checkpoint(net: GlobalNet, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``net`` atomically in the published layout (``state_dict`` + ``meta`` with cirtorch's
    keys, plus ``trained`` and ``name`` when set); ``extra`` adds top-level entries (e.g. ``epoch``).
    cirtorch itself reads it back only when the whitening keeps the dimension (its FC is D → D)."""
    clash = {"state_dict", "meta"} & set(extra)
    if clash:
        raise ValueError(f"extra entries may not replace {sorted(clash)}")
    m = net.meta
    meta = dict(architecture=m["backbone"], local_whitening=False, pooling=m["pooling"], regional=False,
                whitening=net.whiten is not None, mean=[float(v) for v in m["mean"]],
                std=[float(v) for v in m["std"]], outputdim=int(m["outputdim"]),
                trained=bool(m.get("trained", False)))
    if m.get("weights") is not None:  # the pretrained start, for the name of a network not fine-tuned
        meta["weights"] = m["weights"]
    if m.get("name") is not None:
        meta["name"] = m["name"]
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "meta": meta, **extra}, buf)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- torchvision weights
def torchvision_weights_path(backbone: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``backbone``: ``<torch hub dir>/checkpoints/``."""
    if backbone not in TORCHVISION_WEIGHTS:
        raise ValueError(f"no ImageNet weights listed for {backbone!r}; known: {sorted(TORCHVISION_WEIGHTS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[backbone].filename


def load_torchvision_weights(backbone: str, path: str | os.PathLike | None = None,
                             verify: bool = True) -> dict[str, torch.Tensor]:
    """The torchvision ImageNet state dict of ``backbone`` (the full classifier's keys) from
    ``path`` or the torch hub cache, hash-checked unless ``verify`` is False."""
    default = torchvision_weights_path(backbone)
    entry = TORCHVISION_WEIGHTS[backbone]
    path = Path(path) if path is not None else default
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights for {backbone!r} not found: download it from {entry.url} "
                                f"to {path}")
    if verify:
        verify_file(path, entry.sha256_prefix)
    sd = read_checkpoint(path, trusted=verify)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(sd)


# --------------------------------------------------------------------------- caffe features
def caffe_features_path(backbone: str) -> Path:
    """Where cirtorch's caffe ImageNet features of ``backbone`` are expected:
    ``networks_dir()/imagenet/<filename from its URL>`` (``download imagenet-caffe-<backbone>``)."""
    if backbone not in CAFFE_FEATURES:
        raise ValueError(f"cirtorch publishes caffe features only for {sorted(CAFFE_FEATURES)}, not {backbone!r}")
    return networks_dir() / "imagenet" / CAFFE_FEATURES[backbone].filename


def load_caffe_features(net: GlobalNet, path: str | os.PathLike | None = None, verify: bool = True) -> GlobalNet:
    """Load cirtorch's caffe-converted ImageNet features into ``net.features`` (in place; returns
    ``net``), as cirtorch's ``init_network`` does for vgg16 / resnet50/101/152.

    ``path``: default :func:`caffe_features_path` of ``net.meta['backbone']``; ``verify``: check
    the file's sha256 against the prefix of :data:`CAFFE_FEATURES` (a file for another backbone
    needs ``verify=False``). Keys must match ``net.features.state_dict()`` exactly (a ``module.``
    prefix is dropped; BatchNorm ``num_batches_tracked``, absent from old files, is set to 0):
    ValueError naming the missing, unexpected and wrongly shaped keys otherwise.
    """
    backbone = net.meta.get("backbone")
    entry = CAFFE_FEATURES.get(backbone)
    if path is None:
        path = caffe_features_path(backbone)
    path = Path(path)
    if not path.is_file():
        hint = f": download it from {entry.url}" if entry else ""
        raise FileNotFoundError(f"caffe ImageNet features for {backbone!r} not found at {path}{hint}")
    if verify:
        if entry is None:
            raise ValueError(f"no published caffe features for {backbone!r} to verify {path} against "
                             f"(known: {sorted(CAFFE_FEATURES)}); pass verify=False to load it unchecked")
        verify_file(path, entry.sha256_prefix)
    sd = read_checkpoint(path, trusted=verify)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors (expected cirtorch's `features` weights)")
    sd = _strip_prefix(dict(sd))
    expected = net.features.state_dict()
    for k in expected:  # old (PyTorch < 0.4.1) files: no BatchNorm batch counter
        if k.endswith(".num_batches_tracked") and k not in sd and k[:-19] + "running_mean" in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    try:
        _check_fit(sd, expected, f"the features of a {backbone} network", why=" (strict key check)")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    net.features.load_state_dict(sd, strict=True)
    net.meta.update(weights=path.stem, trained=True)
    return net


__all__ = ["CAFFE_FEATURES", "CIRTORCH_META_KEYS", "CaffeFeatures", "PUBLISHED", "PublishedNet",
           "TORCHVISION_WEIGHTS", "TorchvisionWeights", "caffe_features_path", "load_caffe_features",
           "load_checkpoint_dict", "load_published", "load_torchvision_weights", "networks_dir",
           "published_path", "read_checkpoint", "save_cirtorch_checkpoint", "sha256_file",
           "torchvision_weights_path", "verify_file"]


def load_network(spec: str | os.PathLike, verify: bool = True) -> GlobalNet:
    """A network by published name (:data:`PUBLISHED`) or from a checkpoint file in the published
    layout (e.g. one written by :func:`save_cirtorch_checkpoint` after training here)."""
    if str(spec) in PUBLISHED:
        return load_published(str(spec), verify=verify)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"network {str(spec)!r} is neither a published name ({sorted(PUBLISHED)}) "
                                f"nor an existing checkpoint file")
    ckpt = read_checkpoint(path)
    try:
        return load_checkpoint_dict(ckpt)
    except (ValueError, NotImplementedError) as e:
        raise type(e)(f"{path}: {e}") from e

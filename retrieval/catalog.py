"""Where the lab's downloadable weights come from: published retrieval networks (cirtorch), torchvision
ImageNet weights and cirtorch's caffe-converted ImageNet features — URL, sha256 prefix and what each file
is — and where each is expected on disk. Data only (no model code): read by the loaders in
:mod:`retrieval.models.checkpoints` and by the downloader (:mod:`retrieval.datasets.download`).

The hash in a filename follows the torch hub convention (``name-<first hex digits of the file's
sha256>.pth``). torchvision checks its own prefixes on download; cirtorch loads its files without a
hash check, so for those the convention is assumed, not confirmed upstream.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from .config import data_dir
from .io import file_hash

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


# descriptor dimension of the published backbones (their last convolution's channels)
_OUTPUTDIM = {"vgg16": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


def _pub(folder, stem, prefix, backbone, whitening, train_set, reported):
    return PublishedNet(f"{_CIRTORCH}/{folder}/{stem}-{prefix}.pth", prefix, backbone, "gem", whitening,
                        _OUTPUTDIM[backbone], train_set, RTC18, reported)


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


_HEX = re.compile(r"^[0-9a-f]+$")


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


def torchvision_weights_path(backbone: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``backbone``: ``<torch hub dir>/checkpoints/``."""
    if backbone not in TORCHVISION_WEIGHTS:
        raise ValueError(f"no ImageNet weights listed for {backbone!r}; known: {sorted(TORCHVISION_WEIGHTS)}")

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[backbone].filename


def caffe_features_path(backbone: str) -> Path:
    """Where cirtorch's caffe ImageNet features of ``backbone`` are expected:
    ``networks_dir()/imagenet/<filename from its URL>`` (``download imagenet-caffe-<backbone>``)."""
    if backbone not in CAFFE_FEATURES:
        raise ValueError(f"cirtorch publishes caffe features only for {sorted(CAFFE_FEATURES)}, not {backbone!r}")
    return networks_dir() / "imagenet" / CAFFE_FEATURES[backbone].filename

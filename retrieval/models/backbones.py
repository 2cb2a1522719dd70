"""torchvision backbones cut before their global pooling: image (B, 3, H, W) → map (B, C, h, w).

Large ones for gallery / global networks (ResNet, VGG) and small ones for the query networks of
asymmetric retrieval (MobileNetV2/V3, EfficientNet-B0..B3, ShuffleNetV2; Wu et al., SSP).
"""

from __future__ import annotations

from torch import nn

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
}


def build_backbone(name: str = "resnet101", weights: str | None = None) -> tuple[nn.Module, int]:
    """The convolutional part of a torchvision network and its channel count.

    ``weights`` is passed to torchvision (e.g. ``"IMAGENET1K_V1"``; needs the file in the torch
    hub cache or internet); ``None`` gives random initialisation (seed torch first).
    """
    import torchvision

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    ctor, channels = BACKBONES[name]
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

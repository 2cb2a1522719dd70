"""Middle-layer fusion network against a stage-by-stage computation."""

import numpy as np
import pytest
import torch

from retrieval.extract import extract_vectors
from retrieval.models import build_global_net
from retrieval.models.functional import l2n, rmac
from retrieval.models.multilayer import MultiLayerNet, build_multilayer_net


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_global_net("resnet18", "gem").eval()


def test_matches_stage_by_stage(net):
    model = build_multilayer_net(net, ("layer4", "layer2"), weights=[1.0, 0.5]).eval()
    assert model.layers == ("layer2", "layer4")  # in network order, weights follow that order
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        f = net.features
        h = f[:6](x)                      # conv1 … layer2
        v2 = l2n(rmac(h))
        v4 = l2n(rmac(f[6:](h)))
        expect = l2n(torch.cat([1.0 * v2, 0.5 * v4], 1))
        got = model(x)
    assert got.shape == (2, 128 + 512) and model.meta["outputdim"] == 640
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    assert model.meta["name"] == "rmac-l2l4-" + net.name
    assert model.features is net.features  # shared, not copied


def test_last_stage_only_is_the_plain_rmac_network(net, tmp_path):
    from PIL import Image

    rmac_net = build_global_net("resnet18", "rmac").eval()
    rmac_net.features = net.features
    model = build_multilayer_net(net, ("layer4",)).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    a = extract_vectors(model, paths, image_size=64, progress=False)   # works with the shared extractor
    b = extract_vectors(rmac_net, paths, image_size=64, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_layers(net):
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        MultiLayerNet(net.features, ("layer5",))
    with pytest.raises(ValueError, match="layers must be"):
        MultiLayerNet(net.features, ())
    with pytest.raises(ValueError, match="one value per layer"):
        MultiLayerNet(net.features, ("layer3", "layer4"), weights=[1.0])
    with pytest.raises(ValueError, match="trunk of 8 modules"):
        MultiLayerNet(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), ("layer4",))


def test_select_layers_equals_a_net_with_those_layers(net):
    from retrieval.models.multilayer import select_layers

    full = build_multilayer_net(net, ("layer2", "layer3", "layer4")).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        v = full(x)
        for layers in (("layer4",), ("layer3", "layer4"), ("layer2", "layer4")):
            expect = build_multilayer_net(net, layers).eval()(x)
            torch.testing.assert_close(select_layers(v, full.meta, layers), expect, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(select_layers(v.numpy(), full.meta, layers), expect.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="subset of the extracted"):
        select_layers(v, full.meta, ("layer1",))
    with pytest.raises(ValueError, match="dimensions"):
        select_layers(v[:, :10], full.meta, ("layer4",))

"""SuperGlobal's poolings (Shao et al., ICCV 2023): GeM+, Regional-GeM and Scale-GeM against loops written
from their definitions, small maps, and the network / extraction options that use them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.extract import describe
from retrieval.models import build_global_net, build_pooling
from retrieval.models import functional as LF
from retrieval.models.multilayer import build_multipool_net, select_pooling


def slow_local_gem(x, p, size):
    """Window by window, with numpy's reflection (or edge) padding."""
    pad = (size - 1) // 2
    B, C, H, W = x.shape
    mode = "reflect" if min(H, W) > pad else "edge"
    xp = np.pad(np.clip(x.numpy().astype(np.float64), 0, None), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode)
    out = np.empty((B, C, H, W))
    for i in range(H):
        for j in range(W):
            out[:, :, i, j] = np.mean(xp[:, :, i:i + size, j:j + size] ** p, axis=(-2, -1)) ** (1 / p)
    return out


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 3, 3), (1, 2, 2, 5), (1, 2, 1, 1)])
def test_local_gem_equals_the_window_loop_and_survives_small_maps(shape):
    x = torch.rand(shape) * 2 - 0.3                      # some negative entries: clamped to 0
    got = LF.local_gem(x, p=2.5, size=5)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), slow_local_gem(x, 2.5, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(LF.regional_gem(x).numpy(), 0.5 * x.numpy() + 0.5 * got.numpy(), rtol=1e-6, atol=1e-7)


def test_local_gem_matches_the_released_lp_pooling_form():
    """The released code: LPPool2d(2.5, 5, stride 1) of the reflection-padded map divided by 25^(1/2.5)."""
    x = torch.rand(2, 3, 6, 8)
    released = F.lp_pool2d(F.pad(x / 25 ** (1 / 2.5), (2, 2, 2, 2), mode="reflect"), 2.5, 5, stride=1)
    torch.testing.assert_close(LF.local_gem(x), released, rtol=1e-5, atol=1e-6)


def test_gem_plus_and_regional_gem_modules():
    x = torch.rand(2, 8, 5, 6)
    gp, rg = build_pooling("gemp"), build_pooling("rgem")
    assert float(gp.p) == pytest.approx(4.6) and not isinstance(gp.p, torch.nn.Parameter)   # fixed, not learned
    torch.testing.assert_close(gp(x), LF.gem(x, 4.6))
    torch.testing.assert_close(rg(x), LF.gem(LF.regional_gem(x, 2.5, 5), 4.6))
    assert rg(torch.rand(1, 8, 2, 2)).shape == (1, 8)


def test_max_over_scales():
    a, b = torch.tensor([[3.0, 0.0, 4.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    want = torch.tensor([[0.6, 1.0, 0.8]]) / math.sqrt(0.36 + 1 + 0.64)
    torch.testing.assert_close(LF.max_over_scales([a, b]), want)
    assert LF.SCALE_GEM_SCALES == pytest.approx((2 ** -0.5, 1.0, 2 ** 0.5))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_superglobal_network_on_any_backbone_uses_the_max_over_scales(backbone):
    torch.manual_seed(0)
    net = build_global_net(backbone, "rgem").eval()
    assert net.name == f"rgem-{backbone}-untrained"
    x = torch.rand(2, 3, 64, 80)
    scales = LF.SCALE_GEM_SCALES
    with torch.no_grad():
        parts = [net(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                 for s in scales]
        torch.testing.assert_close(describe(net, x, scales), LF.max_over_scales(parts))
        gem_net = build_global_net(backbone, "gem").eval()      # GeM keeps the power mean (Radenović et al.)
        gem_parts = torch.stack([gem_net(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                                                        align_corners=False)) for s in scales])
        assert not torch.allclose(describe(gem_net, x, scales), LF.max_over_scales(list(gem_parts)), atol=1e-4)


def test_multipool_extraction_serves_the_superglobal_rows():
    torch.manual_seed(0)
    net = build_global_net("resnet18", "gem").eval()
    multi = build_multipool_net(net, ["gem", "gemp", "rgem"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        v = multi(x)
        fmap = net.features(x)
    torch.testing.assert_close(select_pooling(v, multi.meta, "gemp"), LF.l2n(LF.gem(fmap, 4.6)))
    torch.testing.assert_close(select_pooling(v, multi.meta, "rgem"), LF.l2n(LF.gem(LF.regional_gem(fmap), 4.6)))


def test_relu_plus_on_resnet_stages_1_to_3_for_superglobal_only(tmp_path):
    from retrieval.models import load_model, save_model
    from retrieval.models.global_net import ReLUPlus

    torch.manual_seed(0)
    net = build_global_net("resnet18", "rgem").eval()
    kinds = {i: {type(b.relu).__name__ for b in net.features[i]} for i in (4, 5, 6, 7)}
    assert kinds == {4: {"ReLUPlus"}, 5: {"ReLUPlus"}, 6: {"ReLUPlus"}, 7: {"ReLU"}}
    assert net.meta["relu_plus"] == 0.014
    x = torch.rand(1, 3, 64, 64) - 0.5
    with torch.no_grad():                       # it changes the output: the floor is not ReLU's 0
        plain = build_global_net("resnet18", "rgem", relu_plus=None).eval()
        plain.load_state_dict(net.state_dict())
        assert not torch.allclose(net(x), plain(x))
        assert torch.equal(ReLUPlus()(torch.tensor([-1.0, 0.0, 0.5])), torch.tensor([0.014, 0.014, 0.5]))
        again = load_model(save_model(net, tmp_path / "sg.pth")).eval()      # rebuilt with its ReLU+
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)
    for backbone, pooling in (("resnet18", "gem"), ("efficientnet_lite0", "rgem")):   # off: not SuperGlobal / not ResNet
        other = build_global_net(backbone, pooling)
        assert "relu_plus" not in other.meta and not any(isinstance(m, ReLUPlus) for m in other.modules())
    with pytest.raises(ValueError, match="ResNet backbones only"):
        build_global_net("efficientnet_lite0", "rgem", relu_plus=0.014)

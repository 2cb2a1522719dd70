"""Query networks for asymmetric retrieval (small torchvision backbones + GeM + projection to the
gallery dimension), their parts, files and cost."""
import numpy as np
import pytest
import torch

from retrieval.models import (BACKBONES, build_backbone, build_global_net, build_query_net, complexity, load_model,
                              save_model)


# --------------------------------------------------------------------------- query networks
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                                      "shufflenet_v2_x0_5", "resnet18"])
def test_query_net_projects_to_the_gallery_dimension(backbone):
    torch.manual_seed(0)
    net = build_query_net(backbone, dim=96).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        out = net(x)
        feats = net.net.features(x)
    assert out.shape == (2, 96)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert feats.shape[1] == BACKBONES[backbone][1]
    assert net.name == f"gem-{backbone}-q96-untrained"


def test_backbone_table_keeps_the_global_networks():
    for name in ("resnet18", "resnet50", "resnet101", "vgg16"):
        assert name in BACKBONES
    features, channels = build_backbone("efficientnet_b3")
    assert channels == 1536 and features.eval()(torch.zeros(1, 3, 32, 32)).shape[1] == 1536


def test_query_net_parts_and_round_trip(tmp_path):
    torch.manual_seed(1)
    net = build_query_net("mobilenet_v3_small", dim=32, classes=5, transform=True)
    out = net(torch.randn(4, 3, 32, 32), outputs=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "descriptor": (4, 32), "embedding": (4, 32), "weight": (5, 32), "weight_transformed": (5, 32)}
    # the class weights' pass through the transform leaves the BatchNorm running statistics alone
    before = net.transform.bn1.running_mean.clone()
    net.transform(net.head, update_stats=False)
    assert torch.equal(before, net.transform.bn1.running_mean)
    net.meta["name"] = "lce-mobilenet_v3_small"
    path = save_model(net.eval(), tmp_path / "q.pth")
    loaded = load_model(path, kind="query")
    x = torch.randn(2, 3, 40, 30)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert loaded.name == "lce-mobilenet_v3_small"
    with pytest.raises(ValueError, match="transform=True"):
        build_query_net("mobilenet_v3_small", dim=32, transform=True)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_model(tmp_path / "absent.pth")


def test_complexity_counts_flops_with_the_library():
    net = build_global_net("resnet18")
    cost = complexity(net, 224, 224)
    assert cost["params"] == sum(p.numel() for p in net.parameters())
    assert 3500 < cost["mflops"] < 3700  # ResNet-18 convolutional part: 1.82 GMACs at 224 px
    q = build_query_net("mobilenet_v3_small", dim=64, classes=10)
    assert complexity(q, 64, 64)["params"] == sum(p.numel() for p in q.parameters()) - 10 * 64  # head left out
    assert complexity(q, 128, 128)["mflops"] > 3 * complexity(q, 64, 64)["mflops"]

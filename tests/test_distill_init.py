"""A query network started from a trained global network reproduces it (distillation's "before")."""

import pytest
import torch

from retrieval.models import build_global_net, build_query_net
from retrieval.models import save_model
from retrieval.tasks import init_query_net


def test_init_query_net_reproduces_the_global_network(tmp_path):
    torch.manual_seed(0)
    src = build_global_net("resnet18", "gem").eval()
    with torch.no_grad():
        src.pool.p.fill_(2.2)
    path = save_model(src, tmp_path / "net.pth")
    torch.manual_seed(1)
    student = build_query_net("resnet18", 512).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert not torch.allclose(student(x), src(x), atol=1e-3)
        init_query_net(student, path)
        torch.testing.assert_close(student(x), src(x), atol=1e-5, rtol=1e-5)
    other = build_query_net("mobilenet_v2", 512)
    with pytest.raises(ValueError, match="backbone 'resnet18' differs"):
        init_query_net(other, path)

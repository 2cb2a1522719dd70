"""save_model / load_model: every kind round-trips to identical outputs; fit's checkpoint and the
authors' released layouts load; wrong files name themselves."""

import pytest
import torch
from torch import nn

from retrieval.models import build_global_net, build_query_net, load_model, model_kind, save_model
from retrieval.models.csa import build_csa
from retrieval.models.pooling import L2N
from retrieval.models.token import build_token
from retrieval.train import TrainConfig, fit


def _global():
    torch.manual_seed(0)
    net = build_global_net("resnet18", "gem", whitening=64)
    net.meta.update(trained=True)
    return net.eval()


def _query():
    torch.manual_seed(0)
    net = build_query_net("mobilenet_v3_small", dim=32, classes=5, transform=True)
    net.meta["name"] = "lce-mobilenet_v3_small"
    return net.eval()


def _token():
    torch.manual_seed(0)
    return build_token("resnet18", dim=32, tokens=2, heads=2, outputdim=16, classes=3).eval()


def _csa():
    torch.manual_seed(0)
    return build_csa(L=8, dim=16, depth=2, heads=2, mlp_ratio=2.0).eval()


def _projection():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 4), L2N()).eval()


CASES = {"global": (_global, lambda: torch.randn(2, 3, 48, 40)),
         "query": (_query, lambda: torch.randn(2, 3, 48, 40)),
         "token": (_token, lambda: torch.randn(2, 3, 64, 64)),
         "csa": (_csa, lambda: torch.rand(2, 5, 8)),
         "projection": (_projection, lambda: torch.randn(3, 12))}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_kind_round_trips(kind, tmp_path):
    build, inputs = CASES[kind]
    model = build()
    assert model_kind(model) == kind
    path = save_model(model, tmp_path / "sub" / f"{kind}.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["kind"] == kind and set(raw) == {"state_dict", "meta"}
    back = load_model(path)
    assert type(back) is type(model) and not back.training
    x = inputs()
    with torch.no_grad():
        a, b = model(x), back(x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert load_model(path, kind=kind) is not None
    other = "csa" if kind != "csa" else "token"
    with pytest.raises(ValueError, match=f"holds a '{kind}' model, not kind='{other}'"):
        load_model(path, kind=other)


def test_global_file_keeps_the_cirtorch_layout(tmp_path):
    path = save_model(_global(), tmp_path / "n.pth")
    meta = torch.load(path, weights_only=True)["meta"]
    assert {"architecture", "pooling", "whitening", "mean", "std", "outputdim"} <= set(meta)
    del meta["kind"]  # a published file has no kind: its architecture says global
    raw = torch.load(path, weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in raw["state_dict"].items()}, "meta": meta}, tmp_path / "p.pth")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "p.pth")(x), _global()(x), rtol=0, atol=0)


def test_fit_checkpoint_loads_as_the_trained_model(tmp_path):
    model = _projection().train()
    x, y = torch.randn(16, 12), torch.randint(0, 2, (16,))
    data = torch.utils.data.TensorDataset(x, y)
    fit(model, data, lambda net, b: (net(b[0]) ** 2).sum() * 0 + net(b[0])[:, 0].mean(),
        TrainConfig(epochs=1, batch_size=8, lr=0.1, out_dir=str(tmp_path), device="cpu"))
    back = load_model(tmp_path / "checkpoint.pt")
    with torch.no_grad():
        torch.testing.assert_close(back(x), model.eval()(x), rtol=0, atol=0)


def test_released_layouts_need_their_kind(tmp_path):
    csa = build_csa(L=8, dim=16, depth=1, heads=2, final_norm=False).eval()
    sd = {("feature_align.layers.0." + k[len("recon."):]) if k.startswith("recon.") else k: v
          for k, v in csa.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "csa_released.pth")
    with pytest.raises(ValueError, match="kind='token' or kind='csa'"):
        load_model(tmp_path / "csa_released.pth")
    back = load_model(tmp_path / "csa_released.pth", kind="csa", heads=2)
    aff = torch.rand(1, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(aff)[0], csa(aff)[0], rtol=0, atol=0)
    tok = build_token("resnet18", dim=32, tokens=2, heads=2, outputdim=16).eval()
    torch.save({"model": {f"module.{k}": v for k, v in tok.state_dict().items()}}, tmp_path / "tok.pth")
    back = load_model(tmp_path / "tok.pth", kind="token", backbone="resnet18", dim=32, tokens=2, heads=2, outputdim=16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), tok(x), rtol=0, atol=0)


def test_bad_specs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a published name"):
        load_model(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="kind='nope'"):
        load_model(tmp_path / "absent.pth", kind="nope")
    with pytest.raises(TypeError, match="not a model of the lab"):
        save_model(nn.Linear(2, 2), tmp_path / "x.pth")
    path = save_model(_projection(), tmp_path / "p.pth")
    raw = torch.load(path, weights_only=True)
    raw["meta"]["dim"] = 5  # the meta no longer fits the weights
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"p\.pth.*wrong shape"):
        load_model(path)

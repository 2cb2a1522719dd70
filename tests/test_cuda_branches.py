"""The package's CUDA branches on a machine without a GPU (``fake_cuda`` in conftest: torch as if GPUs were
present, every tensor on the CPU): the device each step picks has its index, training, extraction and
search ask for this process's GPU only, and give the CPU's results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from retrieval.config import resolve_device
from retrieval.train import TrainConfig, fit
from retrieval.train.loop import _device


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x @ torch.randn(8, 4, generator=g))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def _cfg(tmp_path, **kw):
    return TrainConfig(**dict(dict(epochs=2, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0,
                                   warmup_epochs=0, out_dir=str(tmp_path), log_every=1, seed=0), **kw))


def test_resolve_device_gives_an_indexed_gpu(fake_cuda, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with fake_cuda(2) as cuda:
        assert resolve_device("auto") == resolve_device("cuda") == "cuda:0"
        cuda.current = 1                                  # after torch.cuda.set_device(1)
        assert resolve_device("cuda") == "cuda:1" and resolve_device("cuda:0") == "cuda:0"
        monkeypatch.setenv("LOCAL_RANK", "1")             # torchrun's rank-local GPU wins
        cuda.current = 0
        assert resolve_device("auto") == "cuda:1" and _device(TrainConfig(device="auto")) == torch.device("cuda:1")
        with pytest.raises(ValueError, match=r"cuda:2.*2 CUDA device"):
            resolve_device("cuda:2")
        with pytest.raises(ValueError, match="expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device("cuda:x")
        monkeypatch.setenv("LOCAL_RANK", "2")
        with pytest.raises(ValueError, match=r"LOCAL_RANK=2 .* 2 CUDA device.*nproc_per_node"):
            resolve_device("auto")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("n_gpu, local_rank", [(1, None), (2, "1")])
def test_fit_on_cuda_asks_for_this_process_gpu_only(fake_cuda, monkeypatch, tmp_path, capsys, n_gpu, local_rank):
    """``fit(device="auto")`` on a GPU machine: ``torch.cuda.set_device`` receives an indexed device (it raised
    ``ValueError: Expected a torch.device with a specified index`` before), the model, the batches and the
    running sums go to that GPU and no other, and training matches the CPU's."""
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    want = f"cuda:{local_rank or 0}"
    cpu_hist = fit(_model(), _data(), _mse, _cfg(tmp_path / "cpu", device="cpu", amp="off"))
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cuda"))
        return _mse(model, batch)

    with fake_cuda(n_gpu) as cuda:
        hist = fit(_model(), _data(), loss_fn, _cfg(tmp_path / "gpu", device="auto", amp="off"))
    assert cuda.set_calls == [int(want[-1])]
    assert cuda.requested and set(cuda.requested) == {want}, sorted(set(cuda.requested))
    assert f"fit: device={want}" in capsys.readouterr().out
    assert [r["loss"] for r in hist] == pytest.approx([r["loss"] for r in cpu_hist], rel=1e-6)
    assert not any(seen)
    # amp "auto" on CUDA: autocast in bf16 (the fake GPU supports it), same device requests
    seen.clear()
    with fake_cuda(n_gpu) as cuda:
        fit(_model(), _data(), loss_fn, _cfg(tmp_path / "amp", device="cuda", amp="auto", epochs=1))
    assert all(seen) and len(seen) == 4 and set(cuda.requested) == {want}


def test_extraction_and_search_on_cuda_ask_for_the_indexed_gpu(fake_cuda, monkeypatch, tiny_data):
    from retrieval.datasets import get_test
    from retrieval.extract import extract_vectors
    from retrieval.models import build_global_net
    from retrieval.search import exact_search

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    paths = get_test("synth", "tiny", root=tiny_data, progress=False).db_paths()[:4]
    torch.manual_seed(0)
    net = build_global_net("resnet18", "gem").eval()
    kw = dict(image_size=64, batch_size=2, progress=False)
    ref = extract_vectors(net, paths, device="cpu", **kw)
    rng = np.random.default_rng(0)
    db, q = rng.standard_normal((3000, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    ref_ranks, ref_scores = exact_search(q, db, 20, device="cpu", backend="torch")
    with fake_cuda(1) as cuda:
        dev = resolve_device("auto")
        vecs = extract_vectors(net, paths, device=dev, **kw)
        assert set(cuda.requested) == {"cuda:0"}
        cuda.requested.clear()
        ranks, scores = exact_search(q, db, 20, chunk_size=1000)        # default device: the GPU
        assert set(cuda.requested) == {"cuda:0"}
        on_gpu = torch.from_numpy(db).to(dev)                           # uploaded once, searched in place
        cuda.requested.clear()
        r2, _ = exact_search(q, on_gpu, 20, device=dev, chunk_size=1000)
        assert set(cuda.requested) == {"cuda:0"}
    np.testing.assert_allclose(vecs, ref, atol=1e-6)
    np.testing.assert_array_equal(ranks, ref_ranks)
    np.testing.assert_array_equal(r2, ref_ranks)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_the_fake_catches_what_a_gpu_refuses(fake_cuda):
    """The harness itself: an unindexed ``set_device`` (today's bug) and an index past the GPUs fail."""
    with fake_cuda(1):
        with pytest.raises(ValueError, match="specified index"):
            torch.cuda.set_device(torch.device("cuda"))
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.zeros(2, device="cuda:1")
        assert torch.ones(2).to("cuda:0").device.type == "cpu"

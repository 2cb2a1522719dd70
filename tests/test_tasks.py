"""The global-descriptor training task: in process, and under torchrun with 2 gloo processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from retrieval.models import load_model, save_model
from retrieval.tasks import global_config, global_tuples, train_global

SMALL = dict(preset="tiny", backbone="resnet18", image_size=64, qsize=4, poolsize=16, nnum=2,
             batch_size=2, epochs=2, lr=1e-3, warmup_epochs=0, device="cpu", log_every=1)


@pytest.fixture(scope="module")
def root(tiny_data):
    return tiny_data


def test_global_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="qsise"):
        global_config(qsise=10)


def test_tuple_batches_and_loss(root):
    model, data, loss_fn = global_tuples(global_config(**SMALL, root=str(root)))
    ds = data(0)
    assert len(ds) == 4 and ds[0].shape == (4, 3, 64, 64)  # query, positive, 2 negatives
    batch = torch.stack([ds[0], ds[1]])
    loss = loss_fn(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.pool.p.grad is not None  # GeM p is learned


def test_train_global_learns_and_round_trips(root, tmp_path):
    model, history = train_global(dict(SMALL, root=str(root), out_dir=str(tmp_path / "run"), seed=1))
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert model.name == "gem-resnet18" and model.meta["trained"]
    path = save_model(model, tmp_path / "net.pth")
    loaded = load_model(path)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    assert torch.equal(loaded(x), model(x)) and loaded.name == "gem-resnet18"
    # same meta as the reloaded network (extract_test_set_cached's cache compares it): the learned p, not the initial
    assert model.meta == loaded.meta and model.meta["p"] != 3.0


@pytest.mark.slow
def test_global_task_under_torchrun_two_processes(root, tmp_path):
    cfg = dict(SMALL, root=str(root), out_dir=str(tmp_path / "ddp"), epochs=1, batch_size=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "retrieval.train", "--task", "retrieval.tasks:global_tuples",
                           "--config", str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    # 4 tuples over 2 ranks with 1 tuple per rank and step: 2 steps
    assert ckpt["history"][0]["steps"] == 2

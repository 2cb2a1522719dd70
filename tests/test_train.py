"""Tests for retrieval.train: schedule, weight-decay groups, exact resume, DDP via torchrun, AMP."""
import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import retrieval.train as rt
from retrieval.config import ROOT
from retrieval.distributed import is_distributed
from retrieval.train import TrainConfig, fit
from retrieval.train.__main__ import main as train_cli

TASK_MODULE = "toy_train_task"
# Importable by the pytest process and by torchrun's workers (written into a temp dir).
TASK_SOURCE = textwrap.dedent('''
    """Toy task: a small MLP regressing a fixed random linear map (64 samples)."""
    import hashlib
    import json
    from pathlib import Path

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    import retrieval.train as rt


    def make_data(n=64):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(n, 8, generator=g)
        return TensorDataset(x, x @ torch.randn(8, 4, generator=g))


    def make_model(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


    def mse(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)


    def state_hash(state):
        h = hashlib.sha256()
        for k, v in state.items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


    def task(config):
        out = Path(config["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        if config.get("log_writes"):  # record which rank calls save_checkpoint
            import retrieval.train.loop as loop   # fit's module: where it looks the writer up

            original = loop.save_checkpoint

            def logged(path, state):
                with open(out / f"writes_rank{rt.rank()}.log", "a") as fh:
                    fh.write(Path(path).name + "\\n")
                return original(path, state)

            loop.save_checkpoint = logged
            shards = {
                "map": rt.sharded_map(lambda i: [rt.rank(), i * i], range(5)),
                "extract": rt.sharded_extract(
                    lambda ps: np.array([[len(p), rt.rank()] for p in ps], np.float32).reshape(-1, 2),
                    ["a", "bb", "ccc", "dddd", "eeeee"]).tolist(),
            }
            (out / f"shards_rank{rt.rank()}.json").write_text(json.dumps(shards))

        def on_epoch_end(epoch, history, model):
            if epoch == config["epochs"] - 1:
                (out / f"rank{rt.rank()}.txt").write_text(f"{rt.world()} {state_hash(model.state_dict())}")
            return {"world": rt.world()}

        return make_model(config.get("model_seed", 0)), make_data(), mse, on_epoch_end
''')


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy_task")
    (d / f"{TASK_MODULE}.py").write_text(TASK_SOURCE)
    sys.path.insert(0, str(d))
    try:
        sys.modules.pop(TASK_MODULE, None)
        mod = importlib.import_module(TASK_MODULE)
        mod.dir = d
        yield mod
    finally:
        sys.path.remove(str(d))
        sys.modules.pop(TASK_MODULE, None)


def sgd_cfg(out_dir, **kw):
    base = dict(epochs=3, batch_size=8, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-3,
                warmup_steps=2, min_lr=1e-3, seed=7, device="cpu", log_every=2,
                out_dir=None if out_dir is None else str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# --------------------------------------------------------------------------- config, schedule, groups
def test_config_json_roundtrip_and_validation():
    cfg = TrainConfig(epochs=2, out_dir=Path("x/y"), amp=False)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["out_dir"] == "x/y" and d["amp"] == "off"
    assert TrainConfig.from_dict({**d, "task_option": 3}) == cfg  # unknown (task) keys are ignored
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="maybe")


def expected_lr(step, base, min_lr, warmup, total):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("kw,warmup", [(dict(warmup_steps=3), 3), (dict(warmup_epochs=0.5), 2),
                                       (dict(), 0)])
def test_lr_schedule_warmup_then_cosine(kw, warmup):
    cfg = TrainConfig(epochs=3, lr=0.1, min_lr=0.002, optimizer="sgd", out_dir=None, **kw)
    spe, total = 4, 12
    w = nn.Parameter(torch.zeros(3, 3))
    opt = rt.build_optimizer([{"params": [w]}, {"params": [nn.Parameter(torch.zeros(2, 2))], "lr": 0.3}], cfg)
    sched = rt.build_scheduler(opt, cfg, spe)
    seen = []
    for _ in range(total):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        opt.step()
        sched.step()
    for s, (lr0, lr1) in enumerate(seen):
        assert lr0 == pytest.approx(expected_lr(s, 0.1, 0.002, warmup, total), rel=1e-12, abs=1e-15)
        assert lr1 == pytest.approx(3 * lr0, rel=1e-12)  # a group's own lr follows the same factor
    if warmup:
        assert seen[0][0] == pytest.approx(0.1 / warmup) and seen[warmup - 1][0] == pytest.approx(0.1)
    assert seen[warmup][0] == pytest.approx(0.1)  # cosine starts at the peak
    assert 0.002 < seen[-1][0] < 0.005  # and ends near min_lr


class GeMLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * 3)


def test_weight_decay_exclusions():
    conv, bn, lin, ln, gem = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 5, bias=False), nn.LayerNorm(5), GeMLike()
    frozen = nn.Linear(5, 5)
    frozen.requires_grad_(False)
    model = nn.ModuleDict(dict(conv=conv, bn=bn, lin=lin, ln=ln, gem=gem, frozen=frozen))
    model.tied = lin  # a shared module must not put its weight in two groups
    groups = {g["name"]: g for g in rt.param_groups(model, 0.05)}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups["decay"]["params"]) == ids([conv.weight, lin.weight])
    assert ids(groups["no_decay"]["params"]) == ids([conv.bias, bn.weight, bn.bias, ln.weight, ln.bias, gem.p])
    assert len(groups["decay"]["params"]) == 2
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    for name in ("sgd", "adamw"):
        opt = rt.build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.05, out_dir=None))
        assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


# --------------------------------------------------------------------------- fit: outputs, resume
def test_resume_is_exact(toy, tmp_path):
    calls = {"loss": 0, "data": []}

    def noisy(model, batch):  # uses the global RNG, so an exact resume needs the RNG states
        calls["loss"] += 1
        x, y = batch
        return toy.mse(model, (x + 0.05 * torch.randn_like(x), y))

    def data(epoch):
        calls["data"].append(epoch)
        return toy.make_data()

    def callback(epoch, history, model):
        torch.rand(3)  # randomness in a callback must not change the training stream
        return {"probe": float(model[0].weight.detach().sum())}

    model_a = toy.make_model(0)
    hist_a = fit(model_a, data, noisy, sgd_cfg(tmp_path / "a"), on_epoch_end=callback)
    assert calls["data"] == [0, 1, 2] and calls["loss"] == 3 * 8
    assert [r["epoch"] for r in hist_a] == [0, 1, 2] and all(r["steps"] == 8 for r in hist_a)
    assert hist_a[-1]["loss"] < hist_a[0]["loss"]
    assert all("probe" in r and r["seconds"] > 0 for r in hist_a)

    class Interrupt(Exception):
        pass

    def crash_at_1(epoch, history, model):
        out = callback(epoch, history, model)
        if epoch == 1:
            raise Interrupt
        return out

    calls["data"] = []
    with pytest.raises(Interrupt):
        fit(toy.make_model(0), data, noisy, sgd_cfg(tmp_path / "b"), on_epoch_end=crash_at_1)
    ck = rt.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["step"] == 8 and len(ck["history"]) == 1
    assert ck["config"]["seed"] == 7 and set(ck) >= {"optimizer", "scheduler", "scaler", "rng"}

    calls["data"] = []
    model_c = toy.make_model(1)  # other init: the weights must come from the checkpoint
    hist_c = fit(model_c, data, noisy, sgd_cfg(tmp_path / "b", resume=True), on_epoch_end=callback)
    assert calls["data"] == [1, 2]
    for (k, va), vc in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(va, vc), k
    assert strip_seconds(hist_c) == strip_seconds(hist_a)
    saved = json.loads((tmp_path / "b" / "history.json").read_text())
    assert strip_seconds(saved) == strip_seconds(hist_a)
    assert (tmp_path / "b" / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]

    # a completed run resumed does nothing more
    n_loss, before = calls["loss"], [v.clone() for v in model_c.state_dict().values()]
    again = fit(model_c, data, noisy, sgd_cfg(tmp_path / "b", resume=True))
    assert calls["loss"] == n_loss and strip_seconds(again) == strip_seconds(hist_a)
    assert all(torch.equal(a, b) for a, b in zip(before, model_c.state_dict().values()))

    # resume=False starts afresh (and reproduces run a: same seed, same data order)
    model_d = toy.make_model(0)
    fit(model_d, data, noisy, sgd_cfg(tmp_path / "b", keep_epoch_checkpoints=True), on_epoch_end=callback)
    assert all(torch.equal(a, d) for a, d in zip(model_a.state_dict().values(), model_d.state_dict().values()))
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint_epoch*.pt")) == [
        f"checkpoint_epoch{i}.pt" for i in (1, 2, 3)]


class Indexed(torch.utils.data.Dataset):
    """Sample i = (index i, an input row): lets the loss record the data order."""

    def __init__(self, n=24):
        self.x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i, self.x[i]


def test_data_order_seeded_by_seed_and_epoch(tmp_path):
    model = nn.Linear(8, 1)
    order = []

    def loss_fn(m, batch):
        idx, x = batch
        order.extend(idx.tolist())
        return m(x).pow(2).mean()

    cfg = sgd_cfg(tmp_path, epochs=3, seed=11)
    fit(model, Indexed(), loss_fn, cfg)
    epochs = [order[24 * e:24 * (e + 1)] for e in range(3)]
    for e, got in enumerate(epochs):  # the permutation of seed + epoch, whatever the global RNG
        assert got == torch.randperm(24, generator=torch.Generator().manual_seed(11 + e)).tolist()
    assert epochs[0] != epochs[1] != epochs[2]
    order.clear()
    with pytest.warns(UserWarning, match="epochs"):  # one more epoch: the schedule changes
        fit(nn.Linear(8, 1), Indexed(), loss_fn, sgd_cfg(tmp_path, epochs=4, seed=11, resume=True))
    assert order == torch.randperm(24, generator=torch.Generator().manual_seed(14)).tolist()
    order.clear()
    fit(nn.Linear(8, 1), Indexed(), loss_fn, sgd_cfg(None, epochs=1, seed=11, shuffle=False))
    assert order == list(range(24))


def test_history_lr_follows_schedule_and_grad_clip(toy, tmp_path):
    cfg = sgd_cfg(None, epochs=2, momentum=0.0, weight_decay=0.0)
    hist = fit(toy.make_model(0), toy.make_data(), toy.mse, cfg)
    for r in hist:  # lr recorded = lr of the epoch's last step
        assert r["lr"] == pytest.approx(expected_lr(r["step"] - 1, 0.05, 1e-3, 2, 16), rel=1e-12)
    assert not tmp_path.joinpath("runs").exists()

    def moved(clip):
        m = toy.make_model(0)
        w0 = torch.cat([p.detach().flatten().clone() for p in m.parameters()])
        fit(m, toy.make_data(), toy.mse, sgd_cfg(None, epochs=1, momentum=0.0, weight_decay=0.0, grad_clip=clip))
        return float((torch.cat([p.detach().flatten() for p in m.parameters()]) - w0).norm())

    # plain SGD: each step moves the weights by lr * ||clipped grad|| <= 0.05 * 1e-6, 8 steps
    clipped, free = moved(1e-6), moved(None)
    assert 0 < clipped <= 8 * 0.05 * 1e-6 * 1.001
    assert free > 1e-3


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_double_batch(toy, tmp_path):
    """torchrun, 2 gloo processes x batch 8 == 1 process x batch 16 (same permutation, averaged grads)."""
    common = dict(epochs=3, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-4, warmup_steps=2,
                  min_lr=1e-3, seed=3, device="cpu", log_every=1)
    ddp_dir, one_dir, half_dir = tmp_path / "ddp", tmp_path / "one", tmp_path / "half"
    cfg_path = tmp_path / "ddp.json"
    cfg_path.write_text(json.dumps({**common, "batch_size": 8, "out_dir": str(ddp_dir), "log_writes": True}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(toy.dir), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "retrieval.train", "--task", f"{TASK_MODULE}:task", "--config", str(cfg_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # both ranks end with identical weights, equal to rank 0's checkpoint
    r0, r1 = ((ddp_dir / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert r0 == r1 and r0[0] == "2"
    ck = rt.load_checkpoint(ddp_dir / "checkpoint.pt")
    assert toy.state_hash(ck["model"]) == r0[1]
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["epoch"] == 3
    # only rank 0 wrote checkpoints (one per epoch); no temp files left
    assert (ddp_dir / "writes_rank0.log").read_text().split() == ["checkpoint.pt"] * 3
    assert not (ddp_dir / "writes_rank1.log").exists()
    assert not [p.name for p in ddp_dir.iterdir() if p.name.endswith(".tmp")]
    hist = json.loads((ddp_dir / "history.json").read_text())
    assert [r["steps"] for r in hist] == [4, 4, 4]  # 64 samples / (2 ranks x 8)
    assert all(r["world"] == 2 for r in hist) and hist[-1]["loss"] < hist[0]["loss"]
    # sharded helpers: contiguous shards (rank 0: items 0-1, rank 1: 2-4), original order on every rank
    s0, s1 = (json.loads((ddp_dir / f"shards_rank{r}.json").read_text()) for r in (0, 1))
    assert s0 == s1
    assert s0["map"] == [[0, 0], [0, 1], [1, 4], [1, 9], [1, 16]]
    assert s0["extract"] == [[1, 0], [2, 0], [3, 1], [4, 1], [5, 1]]

    # reference: one process, batch 16, through the same command line (not distributed here)
    for d, b in ((one_dir, 16), (half_dir, 8)):
        p = tmp_path / f"{d.name}.json"
        p.write_text(json.dumps({**common, "batch_size": b, "out_dir": str(d)}))
        assert train_cli(["--task", f"{TASK_MODULE}:task", "--config", str(p)]) == 0
    one = rt.load_checkpoint(one_dir / "checkpoint.pt")
    half = rt.load_checkpoint(half_dir / "checkpoint.pt")
    assert [r["step"] for r in one["history"]] == [r["step"] for r in hist]
    # Rank r's batches are perm[r::2] cut in blocks of 8, so the two ranks' batches at step i are
    # exactly perm[16i:16i+16], the 1-process batch. The mean gradients (DDP: mean of the two
    # 8-sample means, all-reduced) agree in exact arithmetic; only float summation order differs,
    # hence a tight tolerance instead of bitwise equality (observed
    # differences ~1e-7).
    init = toy.make_model(0).state_dict()
    for k, v in ck["model"].items():
        assert torch.allclose(v, one["model"][k], rtol=1e-5, atol=1e-6), k
    # the tolerance is meaningful: the weights moved far more than it, and batch 8 in one process
    # (twice the steps) ends elsewhere
    assert max(float((v - init[k]).abs().max()) for k, v in ck["model"].items()) > 1e-2
    assert max(float((v - half["model"][k]).abs().max()) for k, v in ck["model"].items()) > 1e-3
    for a, b in zip(hist, one["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"], rel=1e-12)


def test_sharded_helpers_without_distributed():
    assert not is_distributed() and rt.world() == 1 and rt.is_main()
    assert rt.sharded_map(lambda x: x + 1, [3, 1, 2]) == [4, 2, 3]
    out = rt.sharded_extract(lambda ps: torch.tensor([[float(len(p))] for p in ps]), ["ab", "c"])
    assert out.tolist() == [[2.0], [1.0]]


# --------------------------------------------------------------------------- AMP
def test_amp_auto_is_off_on_cpu(toy):
    assert rt.resolve_amp("auto", "cpu") is None
    assert rt.resolve_amp("off", "cuda") is None
    assert rt.resolve_amp("on", "cpu", "bf16") is torch.bfloat16
    assert rt.resolve_amp("on", "cuda", "fp16") is torch.float16
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return toy.mse(model, batch)

    fit(toy.make_model(0), toy.make_data(16), loss_fn, sgd_cfg(None, epochs=1, amp="auto"))
    assert seen == [False, False]
    seen.clear()
    hist = fit(toy.make_model(0), toy.make_data(16), loss_fn, sgd_cfg(None, epochs=1, amp="on", amp_dtype="bf16"))
    assert seen == [True, True] and math.isfinite(hist[0]["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: autocast/GradScaler path on cuda")
@pytest.mark.parametrize("dtype", ["auto", "fp16"])
def test_cuda_amp(toy, tmp_path, dtype):
    seen = []

    def loss_fn(model, batch):
        seen.append((torch.is_autocast_enabled("cuda"), batch[0].device.type))
        return toy.mse(model, batch)

    cfg = sgd_cfg(tmp_path, device="cuda", amp="auto", amp_dtype=dtype, epochs=3)
    hist = fit(toy.make_model(0), toy.make_data(), loss_fn, cfg)
    assert set(seen) == {(True, "cuda")} and hist[-1]["loss"] < hist[0]["loss"]
    scaler = rt.load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert bool(scaler) == (dtype == "fp16")  # GradScaler only for fp16


def test_resume_refuses_another_task(toy, tmp_path):
    """A checkpoint records ``task``; resuming with another one is an error, with the same one it continues."""
    out = tmp_path / "t"
    fit(toy.make_model(0), toy.make_data(), toy.mse, sgd_cfg(out, epochs=1), task={"lists_sha1": "aa", "K": 8})
    assert rt.load_checkpoint(out / "checkpoint.pt")["task"] == {"lists_sha1": "aa", "K": 8}
    with pytest.raises(ValueError, match=r"checkpoint of another experiment.*'lists_sha1': \('aa', 'bb'\)"):
        fit(toy.make_model(0), toy.make_data(), toy.mse, sgd_cfg(out, epochs=2, resume=True),
            task={"lists_sha1": "bb", "K": 8})
    # an option the saved task lacks (a newer version's) is named, even when its new value is None
    with pytest.raises(ValueError, match=r"'frozen_bn': \('<absent>', None\)"):
        fit(toy.make_model(0), toy.make_data(), toy.mse, sgd_cfg(out, epochs=2, resume=True),
            task={"lists_sha1": "aa", "K": 8, "frozen_bn": None})
    hist = fit(toy.make_model(0), toy.make_data(), toy.mse, sgd_cfg(out, epochs=2, resume=True),
               task={"lists_sha1": "aa", "K": 8})
    assert [r["epoch"] for r in hist] == [0, 1]

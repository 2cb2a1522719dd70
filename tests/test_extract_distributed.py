"""Test-set extraction sharded over torchrun ranks (gloo on the CPU): 2 ranks write their own db shards,
rank 0 merges, and the file equals the one a single process writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrieval.config import ROOT
from retrieval.extract.__main__ import main as extract_main
from retrieval.io import load_features
from retrieval.run import RunLayout
from retrieval.models import build_global_net, save_model

ARGS = ["--network", "gem-resnet18", "--dataset", "synth", "--preset", "tiny", "--image-size", "64",
        "--batch-size", "2", "--shard-size", "4", "--device", "cpu"]


def _run_with_network(run, net):
    save_model(net, RunLayout(run).trained_network("gem-resnet18"))
    return RunLayout(run).features("synth-tiny", net.name, 64)      # the file is named by the network's name


@pytest.mark.slow
def test_two_ranks_extract_the_same_features_as_one(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tiny_data))
    torch.manual_seed(0)
    net = build_global_net("resnet18", "gem").eval()
    one, two = _run_with_network(tmp_path / "one", net), _run_with_network(tmp_path / "two", net)

    assert extract_main(["--run-dir", str(tmp_path / "one"), *ARGS]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "retrieval.extract", "--run-dir", str(tmp_path / "two"), *ARGS],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("synth-tiny: query") == 1                       # rank 0 reports
    q1, db1, p1 = load_features(one)
    q2, db2, p2 = load_features(two)
    assert p1 == p2 and db1.shape[0] > 3 * 4                                 # several shards per rank
    np.testing.assert_allclose(q2, q1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(db2, db1, rtol=0, atol=1e-6)
    assert not one.with_name(one.name + ".partial").exists() and not two.with_name(two.name + ".partial").exists()


def test_extract_cli_resumes_from_the_shards_on_disk(tmp_path, tiny_data, monkeypatch):
    """A shard already on disk (an interrupted run) is not extracted again: poisoned with zeros, it
    comes back as zeros in the merged file."""
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tiny_data))
    torch.manual_seed(0)
    path = _run_with_network(tmp_path, build_global_net("resnet18", "gem").eval())
    assert extract_main(["--run-dir", str(tmp_path), *ARGS]) == 0
    _, db, params = load_features(path)
    partial = path.with_name(path.name + ".partial")
    partial.mkdir()
    (partial / "params.json").write_text(json.dumps(params))
    np.save(partial / "db_000000004.npy", np.zeros((4, db.shape[1]), np.float32))
    path.unlink()
    assert extract_main(["--run-dir", str(tmp_path), *ARGS]) == 0
    _, again, _ = load_features(path)
    assert (again[4:8] == 0).all()
    np.testing.assert_allclose(np.delete(again, np.s_[4:8], 0), np.delete(db, np.s_[4:8], 0), rtol=0, atol=1e-6)

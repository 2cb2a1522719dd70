"""The one helper per mechanism in retrieval.io: arrays with their JSON record, content fingerprints and
atomic copies (round trips, values computed independently, the errors a reader meets)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from retrieval.io import atomic_copy, fingerprint, load_arrays, save_arrays


def test_arrays_and_their_record_round_trip(tmp_path):
    a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2], np.int64)
    path = save_arrays(tmp_path / "x.npz", {"z": 1, "a": [1, 2]}, key="info", a=a, b=b)
    arrays, record = load_arrays(path, ("a", "b"), key="info")
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["b"], b)
    assert record == {"z": 1, "a": [1, 2]}
    with np.load(path) as z:                               # the record is sorted JSON text, no pickle
        assert str(z["info"]) == json.dumps({"a": [1, 2], "z": 1})
    with pytest.raises(ValueError, match=r"x.npz: not a thing with \['a', 'c'\] and 'info'.*missing \['c'\]"):
        load_arrays(path, ("a", "c"), key="info", what="thing")
    with pytest.raises(FileNotFoundError, match="thing not found"):
        load_arrays(tmp_path / "none.npz", ("a",), what="thing")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a file"):
        load_arrays(tmp_path / "bad.npz", ("a",))
    with pytest.raises(ValueError, match="may not be named 'params'"):
        save_arrays(tmp_path / "y.npz", {}, params=a)


def test_fingerprint_is_sha1_of_the_parts_concatenated():
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)
    want = hashlib.sha1(b"head" + "é".encode() + x.tobytes()).hexdigest()
    assert fingerprint(b"head", "é", x) == want
    assert fingerprint(b"head", "é", x, block_rows=7) == want           # row blocks: the same bytes
    assert fingerprint(b"head", "é", torch.from_numpy(x)) == want       # a tensor by its bytes
    assert fingerprint(b"head", "é", np.asfortranarray(x)) == want      # C order whatever the layout
    assert fingerprint({"b": 1, "a": (1, 2)}) == hashlib.sha1(b'{"a": [1, 2], "b": 1}').hexdigest()
    assert fingerprint(np.array(2.0, np.float32)) == hashlib.sha1(np.float32(2.0).tobytes()).hexdigest()   # 0-d
    assert fingerprint(x) != fingerprint(x[:-1])


def test_atomic_copy(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"0123" * 1000)
    (tmp_path / "b.bin").write_bytes(b"old")
    atomic_copy(src, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]   # no temp file left

"""One helper per mechanism: atomic writes (temp file in the same folder + rename), arrays saved with
the JSON record that describes them (:func:`save_arrays` / :func:`load_arrays`), content fingerprints
(:func:`fingerprint`), and feature files.

A crash or a full disk never leaves a file that looks complete: readers see the old file or the new
one, nothing in between.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 → what open() would have given
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os_err = _os_error(e)
        if os_err is None:
            raise
        if os_err.filename is None:
            os_err.filename = str(path)  # e.g. "[Errno 28] No space left on device: '<path>'"
        if os_err is e:
            raise
        raise os_err from e  # a writer (torch.save) that hid the disk error behind its own
    return path


def _os_error(e: BaseException) -> OSError | None:
    """``e`` if it is an OSError, else the first OSError among the exceptions it was raised from."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def file_hash(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest (``sha256``, ``md5``, any ``hashlib`` name) of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Atomically write ``path`` with ``write(fh)`` (temp file in the same folder, fsync, rename).
    On failure the previous file is untouched and the temp file removed; a disk error raised under
    another exception (as ``torch.save`` does) is re-raised as the OSError, naming ``path``."""
    return _atomic(path, write, mode)


def atomic_copy(src, dst) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (readers of ``dst`` see the old file or the whole copy)."""
    with open(src, "rb") as fin:
        return _atomic(dst, lambda fh: shutil.copyfileobj(fin, fh))


def atomic_write_bytes(path, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data))


def atomic_write_json(path, obj: Any, indent: int | None = 1) -> Path:
    return _atomic(path, lambda fh: json.dump(obj, fh, indent=indent, sort_keys=True), mode="w")


def atomic_write_pickle(path, obj: Any) -> Path:
    return _atomic(path, lambda fh: pickle.dump(obj, fh, protocol=4))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON at ``path``, or None when it is missing or not valid JSON (a state file to redo)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers, tuples as lists and keys as strings: what a
    round trip through JSON gives back (parameters compared with a stored copy)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def atomic_save_npz(path, **arrays: np.ndarray) -> Path:
    return _atomic(path, lambda fh: np.savez(fh, **arrays))


def atomic_save_npy(path, array: np.ndarray) -> Path:
    return _atomic(path, lambda fh: np.save(fh, array))


def save_arrays(path, record: dict, key: str = "params", **arrays: np.ndarray) -> Path:
    """``arrays`` and the JSON ``record`` that describes them (how they were made) in one ``.npz``,
    atomically; the record is a JSON string (sorted keys) under ``key``. Read back by :func:`load_arrays`."""
    if key in arrays:
        raise ValueError(f"{path}: an array may not be named {key!r} (the record's key)")
    return atomic_save_npz(path, **arrays, **{key: np.array(json.dumps(record, sort_keys=True))})


def load_arrays(path, names: Sequence[str], key: str = "params", what: str = "file") -> tuple[dict, dict]:
    """``({name: array}, record)`` of a :func:`save_arrays` file (no pickles). FileNotFoundError when it
    is missing; ValueError naming the file (``what`` it should have been) when it is unreadable or lacks
    one of ``names`` or the record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*names, key) if k not in z.files]
            if missing:
                raise ValueError(f"missing {missing}, has {sorted(z.files)}")
            return {k: z[k] for k in names}, json.loads(str(z[key]))
    except (KeyError, ValueError, OSError, EOFError) as e:
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise ValueError(f"{path}: not {article} {what} with {list(names)} and {key!r} ({e})") from e


def fingerprint(*parts: Any, block_rows: int = 1 << 16) -> str:
    """SHA-1 hex digest of ``parts`` in order: the content fingerprint of caches and training records.
    bytes as they are, str as UTF-8, numpy arrays and torch tensors by their bytes in C order (large
    arrays in row blocks, no full copy), anything else as sorted JSON (:func:`jsonable`). Hashing parts
    one after the other equals hashing their concatenation."""
    h = hashlib.sha1()
    for part in parts:
        if hasattr(part, "detach"):                      # a torch tensor
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(part)
        elif isinstance(part, str):
            h.update(part.encode())
        elif isinstance(part, np.ndarray):
            if part.ndim == 0:
                h.update(part.tobytes())
            for r0 in range(0, part.shape[0] if part.ndim else 0, block_rows):
                h.update(np.ascontiguousarray(part[r0:r0 + block_rows]).tobytes())
        else:
            h.update(json.dumps(jsonable(part), sort_keys=True).encode())
    return h.hexdigest()


FEATURE_DTYPES = ("float32", "float16")


def save_features(path, query: np.ndarray, db: np.ndarray, params: dict, dtype: str = "float32") -> Path:
    """Save ``query`` (n_q, D) float32 and ``db`` (n_db, D) descriptors with the parameters that made
    them (stored as JSON), atomically. ``dtype="float16"`` stores the db in half precision (half the
    bytes: 4 GB instead of 8 for R1M at 2048-d); :func:`~retrieval.search.exact_search` searches it
    without a float32 copy."""
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {FEATURE_DTYPES}")
    query, db = np.asarray(query, np.float32), np.asarray(db, dtype)
    check_features(query, db, name=str(path))
    return save_arrays(path, params, query=query, db=db)


def load_features(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load ``(query, db, params)`` written by :func:`save_features`, validated."""
    arrays, params = load_arrays(path, ("query", "db"), what="feature file")
    query, db = arrays["query"], arrays["db"]
    check_features(query, db, name=str(path))
    return query, db, params


def load_vectors(path) -> np.ndarray:
    """Descriptors (N, D) from a ``.npy`` or from a ``.npz`` written by
    :func:`retrieval.extract.extract_vectors_cached` (key ``vecs``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"descriptor file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "vecs" not in z:
                raise ValueError(f"{path}: expected an array 'vecs' (extract_vectors_cached), found {sorted(z)}")
            return z["vecs"]
    return np.load(path, allow_pickle=False)


def _all_finite(x: np.ndarray, block: int = 1 << 22) -> bool:
    """``np.isfinite(x).all()`` over row blocks of about ``block`` elements (no full-size mask: a
    1M x 2048 db would need a 2 GB temporary). A block's sum is finite when every element is (NaN and
    Inf propagate), so the mask is built only for a block whose sum is not (a NaN, an Inf, or an
    overflow of large finite values): one read of the data, no write, in the common case."""
    rows = max(1, block // max(1, x.shape[1]))
    for i in range(0, x.shape[0], rows):
        part = x[i:i + rows]
        if not np.isfinite(part.sum()) and not np.isfinite(part).all():
            return False
    return True


def check_features(query: np.ndarray, db: np.ndarray, name: str = "features",
                   finite: tuple[str, ...] = ("query", "db")) -> None:
    """Raise ValueError unless ``query`` (n_q, D) and ``db`` (n_db, D) are 2-D arrays of the same
    dimension D, and those named in ``finite`` hold no NaN or Inf (a caller that finds non-finite
    values on its own way through the data leaves that array out)."""
    for what, x in (("query", query), ("db", db)):
        if x.ndim != 2:
            raise ValueError(f"{name}: {what} must be 2-D (n, D), got shape {x.shape}")
        if what in finite and not _all_finite(x):
            raise ValueError(f"{name}: {what} contains NaN or Inf")
    if query.shape[1] != db.shape[1]:
        raise ValueError(f"{name}: query dimension {query.shape[1]} != db dimension {db.shape[1]}")

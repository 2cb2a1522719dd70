"""Downloads of the real benchmarks, the 1M distractors, the training sets and the published networks.

One table (:data:`RESOURCES`) holds the official URLs, where each file goes under ``data/`` (or the
torch hub cache for torchvision weights) and the checksum when one is known:

* published cnnimageretrieval-pytorch networks, its caffe-converted ImageNet features and the
  torchvision weights: the sha256 prefix in their filenames (:mod:`retrieval.models.checkpoints`);
* the four ground-truth files (ROxf, RPar, Oxford5k, Paris6k): their full sha256, pinned below
  (:data:`GND_SHA256`, the bytes in ``tests/data/real_gnd/``);
* GLDv2 shards: the md5 files the dataset publishes next to them;
* everything else has no published checksum: its sha256 is recorded in ``data/checksums.json`` on
  the first download (trust on first use) and every later download or placed file is checked
  against it.

An image archive that another resource already unpacked (Oxford5k and ROxf share
``oxbuild_images-v1.tgz``, Paris6k and RPar the two Paris archives) is not downloaded again: its
files are hard-linked (copied across file systems) from there.

Transfers (:mod:`retrieval.datasets.fetch`) go to a hidden ``.<name>.part`` file next to the destination,
resume with an HTTP ``Range`` request after an interruption, and are renamed into place only once
complete and verified, so a broken download never leaves a file that looks complete. Archives are
unpacked into a temporary folder first and moved into the documented layout (``data/README.md``) only
when the whole archive read cleanly; a marker ``data/downloads/<resource>/<archive>.extracted.json`` then
records it (and the member list, used for R1M subsets) so that reruns skip it.

Command line: ``python -m retrieval.datasets download roxford5k`` (``--parts 1-10`` for a subset of
R1M / GLDv2 shards, ``--list`` for every name); from Python: ``download("roxford5k")``.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..catalog import CAFFE_FEATURES, PUBLISHED, TORCHVISION_WEIGHTS
from ..config import data_dir
from ..io import atomic_write_json, file_hash
from ..models.checkpoints import load_caffe_features, load_published
from ..models.global_net import build_global_net
from .fetch import (ChecksumError, ChecksumRegistry, DownloadError, IncompleteDownload, check_hash, extract_archive,
                    fetch, fetch_md5, mirrored)
from .revisited import load_revisited
from .tuples import load_sfm


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch.

    ``dest``: relative to the base folder (``base="data"``: the data root; ``"hub"``: the torch hub
    directory); for an archive, the folder it is unpacked into. ``extract``: None (keep the file),
    ``"flatten"`` (every member into ``dest``, sub-folders dropped) or ``"tree"`` (layout kept).
    ``sha256``: a full hash or a prefix, when published. ``md5_url``: a published md5 file.
    ``part``: the index of a shard (R1M, GLDv2), selectable with ``parts``. ``manual``: the file
    cannot be fetched by a script (e.g. a Google Drive link); it is verified once placed.
    """

    url: str
    dest: str
    sha256: str | None = None
    md5_url: str | None = None
    extract: str | None = None
    base: str = "data"
    part: int | None = None
    manual: bool = False

    @property
    def filename(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Resource:
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    parts: tuple[int, ...] = ()           # shard indices, when the resource comes in shards
    check: str | None = None              # layout check after download: "revisited", "sfm", "network"
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())


_OXF = "https://www.robots.ox.ac.uk/~vgg/data"
_CMP = "http://cmp.felk.cvut.cz/cnnimageretrieval/data"
_R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
_GLD = "https://s3.amazonaws.com/google-landmark"


#: sha256 of the ground-truth files at ``<_CMP>/test/<name>/gnd_<name>.pkl`` (cirtorch download_test); the same bytes
#: as tests/data/real_gnd/ (revisited pair: feymanpriv/DOLG, identical in uvavision/RerankingTransformer;
#: original pair: luanvu2307/diffusion, cirtorch's files; provenance in that folder's README.md)
GND_SHA256 = {
    "roxford5k": "ba7967754bd2d7d2210a5799f9c45ad5835e269a80ef9d3eba44caa35816c471",
    "rparis6k": "d2e729a5293dda7dda8a15c8383424a42e4964a2c4cfea2f32fa85d11d2df499",
    "oxford5k": "c84e5eb68524fd46aab5c0e80b90f970d7bf677507aeb8cddd6b12990d4bc19e",
    "paris6k": "def916cf4f197a182d9a7840cdb6294489fa57c2121f9742a1bcc6f2209bb345",
}


def _test_set(name: str, archives: list[str], folder: str, description: str) -> Resource:
    """A test set as cirtorch's ``download_test`` lays it out: ``test/<name>/gnd_<name>.pkl`` + ``jpg/``."""
    files = [RemoteFile(f"{_CMP}/test/{name}/gnd_{name}.pkl", f"test/{name}/gnd_{name}.pkl",
                        sha256=GND_SHA256[name])]
    files += [RemoteFile(f"{_OXF}/{folder}/{a}", f"test/{name}/jpg", extract="flatten") for a in archives]
    return Resource(name, description, tuple(files), check="revisited")


def _build() -> dict[str, Resource]:

    res = [
        # sources: cnnimageretrieval-pytorch cirtorch/utils/download.py (download_test, download_train),
        # revisitop python/download.py (download_distractors), cvdfoundation/google-landmark README
        _test_set("roxford5k", ["oxbuild_images-v1.tgz"], "oxbuildings",
                  "revisited Oxford5k: images + ground truth (Radenović et al., CVPR 2018)"),
        _test_set("rparis6k", ["paris_1-v1.tgz", "paris_2-v1.tgz"], "parisbuildings",
                  "revisited Paris6k: images + ground truth (Radenović et al., CVPR 2018)"),
        # the original sets: the same image archives, cirtorch's gnd (55 queries, ok/junk, classic protocol)
        _test_set("oxford5k", ["oxbuild_images-v1.tgz"], "oxbuildings",
                  "original Oxford5k: images + cirtorch's ground truth (Philbin et al., CVPR 2007)"),
        _test_set("paris6k", ["paris_1-v1.tgz", "paris_2-v1.tgz"], "parisbuildings",
                  "original Paris6k: images + cirtorch's ground truth (Philbin et al., CVPR 2008)"),
        Resource("revisitop1m", "R1M: 1,001,001 distractor images in 100 parts (revisitop)",
                 (RemoteFile(f"{_R1M}/revisitop1m.txt", "test/revisitop1m/revisitop1m.txt"),)
                 + tuple(RemoteFile(f"{_R1M}/jpg/revisitop1m.{k}.tar.gz", "test/revisitop1m/jpg",
                                    extract="tree", part=k) for k in range(1, 101)),
                 parts=tuple(range(1, 101)), aliases=("r1m",),
                 notes="~10k images per part; use with distractors='r1m' (all parts) or 'r1m-N' (parts 1..N)"),
        Resource("retrieval-SfM-120k", "retrieval-SfM-120k training images + annotation (Radenović et al.)",
                 (RemoteFile(f"{_CMP}/train/dbs/retrieval-SfM-120k.pkl",
                             "train/retrieval-SfM-120k/retrieval-SfM-120k.pkl"),
                  RemoteFile(f"{_CMP}/train/dbs/retrieval-SfM-120k-whiten.pkl",
                             "train/retrieval-SfM-120k/retrieval-SfM-120k-whiten.pkl"),
                  RemoteFile(f"{_CMP}/train/ims/ims.tar.gz", "train/retrieval-SfM-120k/ims", extract="tree")),
                 check="sfm", aliases=("rsfm120k",)),
        Resource("gldv2-clean", "Google Landmarks v2 train set: csv files + 500 image shards (~1 GB each)",
                 (RemoteFile(f"{_GLD}/metadata/train_clean.csv", "train/gldv2-clean/train_clean.csv"),
                  RemoteFile(f"{_GLD}/metadata/train.csv", "train/gldv2-clean/train.csv"))
                 + tuple(RemoteFile(f"{_GLD}/train/images_{k:03d}.tar", "train/gldv2-clean/train", extract="tree",
                                    md5_url=f"{_GLD}/md5sum/train/md5.images_{k:03d}.txt", part=k)
                         for k in range(500)),
                 parts=tuple(range(500)), aliases=("gldv2",),
                 notes="images at train/<a>/<b>/<c>/<id>.jpg; train_clean.csv lists the clean subset"),
    ]
    for name, net in PUBLISHED.items():
        res.append(Resource(name, f"published network ({net.backbone} {net.pooling}, trained on {net.train_set})",
                            (RemoteFile(net.url, f"networks/{net.filename}", sha256=net.sha256_prefix),),
                            check="network"))
    for backbone, w in TORCHVISION_WEIGHTS.items():
        res.append(Resource(f"imagenet-{backbone}", f"torchvision ImageNet weights of {backbone}",
                            (RemoteFile(w.url, f"checkpoints/{w.filename}", sha256=w.sha256_prefix, base="hub"),)))
    for backbone, c in CAFFE_FEATURES.items():  # what cirtorch's published VGG16/ResNet nets started from
        res.append(Resource(f"imagenet-caffe-{backbone}", f"cirtorch's caffe-converted ImageNet features of {backbone}",
                            (RemoteFile(c.url, f"networks/imagenet/{c.filename}", sha256=c.sha256_prefix),),
                            check="caffe", notes="load with retrieval.models.checkpoints.load_caffe_features"))
    # Token (Wu et al., AAAI 2022): the authors publish their checkpoints only as Google Drive links
    # (MCC-WH/Token README), which need a browser; placed by hand, then verified (trust on first use).
    for arch, drive in (("r50", "https://drive.google.com/file/d/111CQpn38d2P82VhbawMrM5wGNMU9AlFq/view"),
                        ("r101", "https://drive.google.com/file/d/1g_fvpaSyYn9QmzyVnoY7cDlUL7EZWbZz/view")):
        res.append(Resource(f"token-{arch}", f"Token {arch.upper()} checkpoint of its authors (manual download)",
                            (RemoteFile(drive, f"networks/token_{arch}.pth", manual=True),),
                            notes="load with retrieval.models.load_model(path, kind='token')"))
    return {r.name: r for r in res}


RESOURCES: dict[str, Resource] = _build()
GROUPS = {"test": ("roxford5k", "rparis6k", "oxford5k", "paris6k"),
          "networks": tuple(n for n, r in RESOURCES.items() if r.check == "network"),
          "imagenet": tuple(n for n in RESOURCES if n.startswith("imagenet-"))}


def resource(name: str) -> Resource:
    """A resource by name or alias; ValueError listing the names otherwise."""
    for r in RESOURCES.values():
        if name == r.name or name in r.aliases:
            return r
    raise ValueError(f"unknown download {name!r}; known: {', '.join(sorted(RESOURCES))} "
                     f"(groups: {', '.join(GROUPS)})")


def parse_parts(spec: str | int | list | tuple | None, available: tuple[int, ...], name: str = "") -> tuple[int, ...]:
    """``"1-10"``, ``"1,3,5-7"``, an int or a list → sorted shard indices, checked against ``available``."""
    if spec is None:
        return available
    if isinstance(spec, int) and not isinstance(spec, bool):
        chosen = {spec}
    elif isinstance(spec, str):
        chosen = set()
        for piece in filter(None, (p.strip() for p in spec.split(","))):
            lo, _, hi = piece.partition("-")
            try:
                a, b = int(lo), int(hi or lo)
            except ValueError:
                raise ValueError(f"parts={spec!r}: expected e.g. '1-10' or '1,3,5-7'") from None
            chosen.update(range(a, b + 1))
    else:
        chosen = {int(p) for p in spec}
    if not available:
        raise ValueError(f"{name} does not come in parts; drop parts={spec!r}")
    bad = sorted(chosen - set(available))
    if bad or not chosen:
        raise ValueError(f"parts={spec!r} for {name}: parts are {available[0]}..{available[-1]}"
                         + (f"; not available: {bad[:10]}" if bad else ""))
    return tuple(sorted(chosen))


# --------------------------------------------------------------------------- resources
def _base(f: RemoteFile, root: Path) -> Path:
    if f.base == "hub":

        return Path(torch.hub.get_dir())
    return root


def _marker(root: Path, res: Resource, f: RemoteFile) -> Path:
    return root / "downloads" / res.name / f"{f.filename}.extracted.json"


def download(name: str, root: str | os.PathLike | None = None, parts=None, mirror: str | None = None,
             keep_archives: bool = False, progress: bool = True, retries: int = 3, timeout: float = 60.0,
             backoff: float = 2.0) -> list[Path]:
    """Download (and unpack, and check) the resource ``name`` (see :data:`RESOURCES` or ``--list``;
    a group name fetches several); returns the files and folders it provides.

    ``root``: the data folder (default ``data/`` or ``$RETRIEVAL_DATA_DIR``). ``parts``: a subset of
    shards (``"1-10"``) for R1M / GLDv2. ``mirror``: a base URL serving ``<host>/<path>`` of the
    official URLs (a local copy; the tests' server). Finished files and unpacked archives are
    skipped on a rerun; interrupted transfers resume.
    """

    if name in GROUPS:
        return [p for n in GROUPS[name] for p in download(n, root, parts, mirror, keep_archives, progress,
                                                          retries, timeout, backoff)]
    res = resource(name)
    root = Path(root) if root is not None else data_dir()
    chosen = parse_parts(parts, res.parts, res.name) if (parts is not None or res.parts) else ()
    registry = ChecksumRegistry(root / "checksums.json")
    out: list[Path] = []
    for f in res.files:
        if f.part is not None and f.part not in chosen:
            continue
        dest = _base(f, root) / f.dest
        if f.manual:
            out.append(_verify_placed(f, dest, registry, res))
            continue
        if f.extract is None:
            out.append(_fetch_file(f, dest, registry, mirror, progress, retries, timeout, backoff))
            continue
        marker = _marker(root, res, f)
        if marker.exists() and dest.is_dir():
            out.append(dest)
            continue
        reused = _reuse_unpacked(root, res, f, dest)
        if reused is not None:
            atomic_write_json(marker, reused, indent=None)
            out.append(dest)
            continue
        archive = root / "downloads" / res.name / f.filename
        trusted_before = f.sha256 or registry.get(f.url)
        if not archive.exists():
            _fetch_file(f, archive, registry, mirror, progress, retries, timeout, backoff)
        try:
            members = extract_archive(archive, dest, flatten=f.extract == "flatten", progress=progress)
        except DownloadError:
            archive.unlink(missing_ok=True)
            if not trusted_before:  # a hash recorded from a broken archive must not be trusted later
                registry.forget(f.url)
            raise
        atomic_write_json(marker, {"url": f.url, "sha256": file_hash(archive), "into": f.dest,
                                   "n_files": len(members), "files": members}, indent=None)
        if not keep_archives:
            archive.unlink()
        out.append(dest)
    _check_layout(res, root)
    return out


def _reuse_unpacked(root: Path, res: Resource, f: RemoteFile, dest: Path) -> dict | None:
    """When another resource unpacked the same archive (same URL and layout) and all its files are
    still there, hard-link them into ``dest`` (copy across file systems); returns the marker record
    for ``res``, or None (then the archive is downloaded)."""
    for other in RESOURCES.values():
        for g in other.files if other.name != res.name else ():
            if g.url != f.url or g.extract != f.extract:
                continue
            marker = _marker(root, other, g)
            record = json.loads(marker.read_text()) if marker.is_file() else {}
            src, files = _base(g, root) / g.dest, record.get("files") or []
            if not files or not all((src / rel).is_file() for rel in files):
                continue
            for rel in files:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    os.link(src / rel, target)
                except OSError:
                    shutil.copyfile(src / rel, target)
            return dict(record, into=f.dest, reused_from=other.name)
    return None


def _fetch_file(f: RemoteFile, dest: Path, registry: ChecksumRegistry, mirror, progress, retries, timeout,
                backoff) -> Path:
    expected = f.sha256 or registry.get(f.url)
    if dest.exists():
        if expected:
            try:
                check_hash(dest, expected, "sha256", f.url)
            except ChecksumError as e:
                raise ChecksumError(f"{e}; delete {dest} to download it again") from None
        else:
            registry.record(f.url, file_hash(dest), dest.stat().st_size)
        return dest
    md5 = fetch_md5(mirrored(f.md5_url, mirror), timeout) if f.md5_url else None
    digest = fetch(mirrored(f.url, mirror), dest, sha256=expected, md5=md5, progress=progress, retries=retries,
                   timeout=timeout, backoff=backoff, source=f.url)
    if not expected:
        registry.record(f.url, digest, dest.stat().st_size)
    return dest


def _verify_placed(f: RemoteFile, dest: Path, registry: ChecksumRegistry, res: Resource) -> Path:
    if not dest.is_file():
        raise DownloadError(f"{res.name}: only published as {f.url} (needs a browser); download it by hand "
                            f"to {dest}, then run `python -m retrieval.datasets verify {res.name}`")
    expected = f.sha256 or registry.get(f.url)
    if expected:
        check_hash(dest, expected, "sha256", f.url)
    else:
        registry.record(f.url, file_hash(dest), dest.stat().st_size)
    return dest


def verify(name: str, root: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every file of ``name`` already on disk against its known checksum (recording it when
    none is known yet); returns ``{path: sha256}``. Archives are checked through their markers."""

    res = resource(name)
    root = Path(root) if root is not None else data_dir()
    registry = ChecksumRegistry(root / "checksums.json")
    done: dict[str, str] = {}
    for f in res.files:
        dest = _base(f, root) / f.dest
        if f.extract:
            marker = _marker(root, res, f)
            if marker.exists():
                done[str(dest)] = json.loads(marker.read_text())["sha256"]
            continue
        if f.manual:
            _verify_placed(f, dest, registry, res)
        elif dest.exists():
            _fetch_file(f, dest, registry, None, False, 0, 0, 0)
        else:
            continue
        done[str(dest)] = file_hash(dest)
    if not done:
        raise FileNotFoundError(f"{res.name}: nothing downloaded yet under {root}")
    return done


def _check_layout(res: Resource, root: Path) -> None:
    if res.check == "revisited":

        ds = load_revisited(root, res.name)
        paths = ds.query_paths() + ds.db_paths()
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DownloadError(f"{res.name}: {len(missing)} of {len(paths)} images listed in "
                                f"gnd_{res.name}.pkl are missing, e.g. {missing[0]}")
    elif res.check == "sfm":

        db = load_sfm(root, res.name)
        paths = [p for split in db.values() for p in split["paths"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DownloadError(f"{res.name}: {len(missing)} of {len(paths)} training images are missing, "
                                f"e.g. {missing[0]}")
    elif res.check == "network":

        load_published(res.name, path=root / res.files[0].dest)
    elif res.check == "caffe":

        load_caffe_features(build_global_net(res.name[len("imagenet-caffe-"):], weights=None),
                            path=root / res.files[0].dest)


__all__ = ["ChecksumError", "ChecksumRegistry", "DownloadError", "GND_SHA256", "GROUPS", "IncompleteDownload",
           "RESOURCES",
           "RemoteFile", "Resource", "download", "extract_archive", "fetch", "fetch_md5", "file_hash",
           "mirrored", "parse_parts", "resource", "verify"]

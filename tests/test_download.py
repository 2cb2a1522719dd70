"""Downloads against a local HTTP server on 127.0.0.1 that serves tiny stand-in archives in the real
layout (nothing leaves this machine): success, resume, checksum mismatch, 404, truncated archive,
the pinned ground-truth hashes (checked with the real files of tests/data/real_gnd)."""

import dataclasses
import hashlib
import io
import json
import pickle
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import datasets
from retrieval.datasets import download as dl
from retrieval.datasets.__main__ import main as cli

REAL_GND = Path(__file__).parent / "data" / "real_gnd"


# --------------------------------------------------------------------------- the server
class Handler(BaseHTTPRequestHandler):
    """Serves ``server.www/<host>/<path>``; honours ``Range``; paths in ``server.cut`` are sent only
    up to ``server.cut[path]`` bytes (with the full Content-Length) and the connection is closed."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        path = urllib.parse.unquote(self.path)
        srv.log.append((path, self.headers.get("Range")))
        file = srv.www / path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and srv.ranges:
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path in srv.cut:
            body = body[:srv.cut.pop(path)]
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.www, srv.log, srv.cut, srv.ranges = tmp_path / "www", [], {}, True
    srv.www.mkdir()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def serve(srv, url: str, data: bytes) -> Path:
    """Put ``data`` where the mirror serves the official ``url``."""
    parts = urllib.parse.urlsplit(url)
    path = srv.www / parts.netloc / parts.path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def served_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"/{parts.netloc}{parts.path}"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gnd_pickle(db: list[str], queries: list[str]) -> bytes:
    gnd = [{"bbx": [0, 0, 20, 16], "easy": [0], "hard": [1], "junk": []} for _ in queries]
    return pickle.dumps({"imlist": db, "qimlist": queries, "gnd": gnd})


def url_of(name: str, filename: str) -> str:
    return next(f.url for f in dl.resource(name).files if f.filename == filename)


def unpin_gnd(monkeypatch, name: str) -> None:
    """Drop the pinned sha256 of ``name``'s gnd for one test: the stand-in gnd has other bytes than
    the real file (the pin itself is tested with the real bytes below)."""
    res = dl.RESOURCES[name]
    files = tuple(dataclasses.replace(f, sha256=None) if f.filename.startswith("gnd_") else f for f in res.files)
    monkeypatch.setitem(dl.RESOURCES, name, dataclasses.replace(res, files=files))


def stand_in_oxford(srv, monkeypatch) -> list[str]:
    unpin_gnd(monkeypatch, "roxford5k")
    db, qs = [f"all_souls_{i:06d}" for i in range(4)], ["radcliffe_camera_000001", "bodleian_000002"]
    serve(srv, url_of("roxford5k", "gnd_roxford5k.pkl"), gnd_pickle(db, qs))
    serve(srv, url_of("roxford5k", "oxbuild_images-v1.tgz"),
          tar_bytes({f"{n}.jpg": jpeg(i) for i, n in enumerate(db + qs)}))  # flat, as the real archive
    return db + qs


def stand_in_paris(srv, monkeypatch) -> list[str]:
    unpin_gnd(monkeypatch, "rparis6k")
    one, two = ["paris_defense_000001", "paris_defense_000002"], ["paris_louvre_000001", "paris_louvre_000002"]
    serve(srv, url_of("rparis6k", "gnd_rparis6k.pkl"), gnd_pickle(one + two[:1], two[1:]))
    # the real archives hold paris/<landmark>/<image>.jpg
    serve(srv, url_of("rparis6k", "paris_1-v1.tgz"), tar_bytes({f"paris/defense/{n}.jpg": jpeg(i) for i, n in enumerate(one)}))
    serve(srv, url_of("rparis6k", "paris_2-v1.tgz"), tar_bytes({f"paris/louvre/{n}.jpg": jpeg(9 + i) for i, n in enumerate(two)}))
    return one + two


# --------------------------------------------------------------------------- success
def test_download_revisited_sets_into_the_documented_layout(server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    ox, pa = stand_in_oxford(server, monkeypatch), stand_in_paris(server, monkeypatch)
    dl.download("roxford5k", root, mirror=server.url, progress=False)
    assert cli(["download", "rparis6k", "--root", str(root), "--mirror", server.url]) == 0
    for name, images in (("roxford5k", ox), ("rparis6k", pa)):
        ds = datasets.load_revisited(root, name)
        assert all(p.is_file() for p in ds.query_paths() + ds.db_paths())
        assert sorted(p.name for p in (root / "test" / name / "jpg").iterdir()) == sorted(f"{n}.jpg" for n in images)
    assert not list((root / "downloads").rglob("*.tgz"))            # archives removed after unpacking
    assert not list(root.rglob("*.part")) and not list(root.rglob(".*.extract-*"))
    registry = json.loads((root / "checksums.json").read_text())  # unpinned: trust on first use
    gnd = root / "test" / "roxford5k" / "gnd_roxford5k.pkl"
    assert registry[url_of("roxford5k", "gnd_roxford5k.pkl")]["sha256"] == hashlib.sha256(gnd.read_bytes()).hexdigest()
    assert url_of("rparis6k", "paris_2-v1.tgz") in registry
    n = len(server.log)
    dl.download("roxford5k", root, mirror=server.url, progress=False)  # finished: nothing fetched again
    assert len(server.log) == n
    assert datasets.get_test("roxford5k", root=root).n_db == 4


def test_r1m_parts_subset_and_distractors_appended(server, tmp_path):
    root = tmp_path / "data"
    for k in (1, 2, 3):
        serve(server, url_of("revisitop1m", f"revisitop1m.{k}.tar.gz"),
              tar_bytes({f"{k:02d}/img{k}_{j}.jpg": jpeg(100 * k + j) for j in range(2)}))
    serve(server, url_of("revisitop1m", "revisitop1m.txt"), b"01/img1_0.jpg\n")
    dl.download("r1m", root, parts="1-2", mirror=server.url, progress=False)
    fetched = {p for p, _ in server.log}
    assert served_path(url_of("revisitop1m", "revisitop1m.2.tar.gz")) in fetched
    assert served_path(url_of("revisitop1m", "revisitop1m.3.tar.gz")) not in fetched
    assert (root / "test" / "revisitop1m" / "jpg" / "02" / "img2_1.jpg").is_file()  # layout kept

    base = datasets.get_test("synth", "tiny", root=root, progress=False)
    ds = datasets.get_test("synth", "tiny", root=root, progress=False, distractors="r1m-2")
    assert ds.name == f"{base.name}+r1m-2" and ds.n_db == base.n_db + 4 and ds.gnd == base.gnd
    assert ds.db_paths()[:base.n_db] == base.db_paths()              # gnd indices still point at the same images
    assert [p.name for p in ds.db_paths()[base.n_db:]] == ["img1_0.jpg", "img1_1.jpg", "img2_0.jpg", "img2_1.jpg"]
    with pytest.raises(FileNotFoundError, match=r"parts \[3\].*download revisitop1m --parts 1-3"):
        datasets.get_test("synth", "tiny", root=root, progress=False, distractors="r1m-3")
    with pytest.raises(ValueError, match="distractors='r2m'"):
        datasets.get_test("synth", "tiny", root=root, progress=False, distractors="r2m")
    with pytest.raises(ValueError, match="parts are 1..100"):
        dl.download("r1m", root, parts="0-2", mirror=server.url, progress=False)


# --------------------------------------------------------------------------- resume
def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)
    url = "http://example.org/files/big.bin"
    serve(server, url, data)
    path = served_path(url)
    server.cut[path] = 1 << 20
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(dl.IncompleteDownload, match="resumed next time"):
        dl.fetch(dl.mirrored(url, server.url), dest, retries=0, progress=False)
    part = dest.with_name(".big.bin.part")
    assert not dest.exists() and part.stat().st_size == 1 << 20       # nothing that looks complete
    digest = dl.fetch(dl.mirrored(url, server.url), dest, retries=0, progress=False)
    assert server.log[-1] == (path, f"bytes={1 << 20}-")
    assert dest.read_bytes() == data and digest == hashlib.sha256(data).hexdigest() and not part.exists()

    # within one call: the retry resumes where the cut left off
    server.cut[path] = 5000
    dest2 = tmp_path / "out" / "again.bin"
    dl.fetch(dl.mirrored(url, server.url), dest2, retries=2, backoff=0, progress=False)
    assert dest2.read_bytes() == data and server.log[-1] == (path, "bytes=5000-")


def test_server_without_range_support_restarts_the_file(server, tmp_path):
    data = np.random.default_rng(1).bytes(200_000)
    url = "http://example.org/files/norange.bin"
    serve(server, url, data)
    server.ranges = False
    dest = tmp_path / "norange.bin"
    dest.with_name(".norange.bin.part").write_bytes(b"stale partial bytes")
    dl.fetch(dl.mirrored(url, server.url), dest, retries=0, progress=False)
    assert dest.read_bytes() == data


# --------------------------------------------------------------------------- checksums
def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url = "http://example.org/files/a.bin"
    serve(server, url, b"payload")
    dest = tmp_path / "a.bin"
    with pytest.raises(dl.ChecksumError, match=r"sha256 mismatch.*expected 0000"):
        dl.fetch(dl.mirrored(url, server.url), dest, sha256="0000", progress=False)
    assert not dest.exists() and not list(tmp_path.glob(".*part"))
    good = hashlib.sha256(b"payload").hexdigest()
    assert dl.fetch(dl.mirrored(url, server.url), dest, sha256=good[:8], progress=False) == good


def test_published_network_hash_prefix_is_enforced(server, tmp_path):
    name = "gl18-tl-resnet101-gem-w"
    serve(server, url_of(name, "gl18-tl-resnet101-gem-w-a4d43db.pth"), b"not the published weights")
    with pytest.raises(dl.ChecksumError, match="expected a4d43db"):
        dl.download(name, tmp_path / "data", mirror=server.url, progress=False)
    assert not (tmp_path / "data" / "networks" / "gl18-tl-resnet101-gem-w-a4d43db.pth").exists()


def test_recorded_checksum_catches_a_changed_file(server, tmp_path):
    root = tmp_path / "data"
    url = url_of("retrieval-SfM-120k", "retrieval-SfM-120k-whiten.pkl")
    for f in dl.resource("retrieval-SfM-120k").files:
        serve(server, f.url, b"first version")
    dest = root / "train" / "retrieval-SfM-120k" / "retrieval-SfM-120k-whiten.pkl"
    dl._fetch_file(dl.resource("rsfm120k").files[1], dest, dl.ChecksumRegistry(root / "checksums.json"),
                   server.url, False, 0, 5, 0)
    serve(server, url, b"changed upstream")
    dest.unlink()
    with pytest.raises(dl.ChecksumError, match="sha256 mismatch"):
        dl._fetch_file(dl.resource("rsfm120k").files[1], dest, dl.ChecksumRegistry(root / "checksums.json"),
                       server.url, False, 0, 5, 0)
    dest.write_bytes(b"edited by hand")
    with pytest.raises(dl.ChecksumError, match="delete .* to download it again"):
        dl.verify("retrieval-SfM-120k", root)


def test_gldv2_shard_checked_against_its_published_md5(server, tmp_path):
    root = tmp_path / "data"
    shard = tar_bytes({"0/1/2/0123456789abcdef.jpg": jpeg(7)}, mode="w")
    f = next(f for f in dl.resource("gldv2").files if f.part == 0)
    for g in dl.resource("gldv2").files[:2]:
        serve(server, g.url, b"landmark_id,images\n1,0123456789abcdef\n")
    serve(server, f.url, shard)
    serve(server, f.md5_url, b"d41d8cd98f00b204e9800998ecf8427e  images_000.tar\n")
    with pytest.raises(dl.ChecksumError, match="md5 mismatch"):
        dl.download("gldv2", root, parts=0, mirror=server.url, progress=False)
    serve(server, f.md5_url, f"{hashlib.md5(shard).hexdigest()}  images_000.tar\n".encode())
    dl.download("gldv2", root, parts="0", mirror=server.url, progress=False)
    assert (root / "train" / "gldv2-clean" / "train" / "0" / "1" / "2" / "0123456789abcdef.jpg").is_file()


# --------------------------------------------------------------------------- failures
def test_404_names_the_url(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"gnd_roxford5k.pkl: 404 Not Found"):
        dl.download("roxford5k", tmp_path / "data", mirror=server.url, progress=False)
    assert not list((tmp_path / "data").rglob("*.pkl")) and not list((tmp_path / "data").rglob("*.part"))
    assert cli(["download", "roxford5k", "--root", str(tmp_path / "data"), "--mirror", server.url]) == 1


def test_truncated_archive_is_refused_and_fetched_again(server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    stand_in_oxford(server, monkeypatch)
    archive_url = url_of("roxford5k", "oxbuild_images-v1.tgz")
    full = (server.www / served_path(archive_url).lstrip("/")).read_bytes()
    serve(server, archive_url, full[: len(full) // 2])  # the server itself holds a cut file
    with pytest.raises(dl.DownloadError, match="oxbuild_images-v1.tgz: truncated or corrupt archive"):
        dl.download("roxford5k", root, mirror=server.url, progress=False)
    jpg = root / "test" / "roxford5k" / "jpg"
    assert not list(jpg.iterdir())                                   # nothing half-unpacked
    assert not (root / "downloads" / "roxford5k" / "oxbuild_images-v1.tgz").exists()
    assert not list((root / "downloads").rglob("*.extracted.json"))
    serve(server, archive_url, full)
    dl.download("roxford5k", root, mirror=server.url, progress=False)
    assert len(list(jpg.iterdir())) == 6


def test_no_network_and_disk_full_give_clear_errors(server, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(dl.DownloadError, match="cannot reach 127.0.0.1"):
        dl.fetch(f"{closed}/x.bin", tmp_path / "x.bin", retries=0, timeout=5, progress=False)
    serve(server, "http://example.org/big.bin", b"x" * 10_000)

    class Tiny:
        free = 100
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: Tiny)
    with pytest.raises(dl.DownloadError, match=r"disk full: .* needs"):
        dl.fetch(dl.mirrored("http://example.org/big.bin", server.url), tmp_path / "big.bin", progress=False)


def test_archive_members_outside_the_folder_are_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_bytes({"../escape.txt": b"x"}, mode="w"))
    with pytest.raises(dl.DownloadError, match="outside the extraction folder"):
        dl.extract_archive(archive, tmp_path / "into", progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_manual_checkpoint_is_verified_once_placed(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match=r"drive.google.com.*verify token-r101"):
        dl.download("token-r101", root, progress=False)
    placed = root / "networks" / "token_r101.pth"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"weights as placed")
    first = dl.verify("token-r101", root)                   # recorded on first sight
    assert first[str(placed)] == hashlib.sha256(b"weights as placed").hexdigest()
    placed.write_bytes(b"another file")
    with pytest.raises(dl.ChecksumError):
        dl.verify("token-r101", root)


def test_parts_and_names_are_checked():
    assert dl.parse_parts("1-3,7", tuple(range(1, 101))) == (1, 2, 3, 7)
    with pytest.raises(ValueError, match="expected e.g."):
        dl.parse_parts("one", tuple(range(1, 101)))
    with pytest.raises(ValueError, match="does not come in parts"):
        dl.download("roxford5k", parts="1")
    with pytest.raises(ValueError, match="unknown download 'roxford'"):
        dl.resource("roxford")
    assert dl.resource("r1m").name == "revisitop1m"
    # every published network is in the table, with the hash prefix of its filename
    from retrieval.models.checkpoints import PUBLISHED
    for name, net in PUBLISHED.items():
        (f,) = dl.resource(name).files
        assert f.url == net.url and f.sha256 == net.sha256_prefix and f.dest == f"networks/{net.filename}"


# --------------------------------------------------------------------------- pinned hashes
GND_NAMES = ("roxford5k", "rparis6k", "oxford5k", "paris6k")


def test_ground_truth_hashes_are_pinned_to_the_real_files():
    """The table carries the full sha256 of each real gnd (no trust on first use); the test data
    in tests/data/real_gnd are those bytes."""
    assert set(dl.GROUPS["test"]) == set(GND_NAMES)
    for name in GND_NAMES:
        (gnd,) = [f for f in dl.resource(name).files if f.filename == f"gnd_{name}.pkl"]
        assert gnd.url == f"http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/{name}/gnd_{name}.pkl"
        assert gnd.dest == f"test/{name}/gnd_{name}.pkl"
        assert gnd.sha256 == hashlib.sha256((REAL_GND / f"gnd_{name}.pkl").read_bytes()).hexdigest()
    # the original sets come from the same image archives as the revisited ones
    archives = lambda n: [f.url for f in dl.resource(n).files if f.extract]  # noqa: E731
    oxbuild = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"
    assert archives("oxford5k") == archives("roxford5k") == [oxbuild]
    assert archives("paris6k") == archives("rparis6k") and len(archives("paris6k")) == 2


def test_pinned_gnd_rejects_other_bytes_downloaded_or_placed(server, tmp_path):
    root = tmp_path / "data"
    url = url_of("oxford5k", "gnd_oxford5k.pkl")
    dest = root / "test" / "oxford5k" / "gnd_oxford5k.pkl"
    real = (REAL_GND / "gnd_oxford5k.pkl").read_bytes()
    # served with other bytes (a valid pickle in the right format, but not the published file)
    serve(server, url, gnd_pickle(["a", "b"], ["c"]))
    with pytest.raises(dl.ChecksumError, match="sha256 mismatch.*c84e5eb68524"):
        dl.download("oxford5k", root, mirror=server.url, progress=False)
    assert not dest.exists() and not list(root.rglob("*.part"))
    # placed by hand with other bytes: refused, never recorded as trusted
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(real[:-1] + b"\x00")
    with pytest.raises(dl.ChecksumError, match="delete .*gnd_oxford5k.pkl to download it again"):
        dl.download("oxford5k", root, mirror=server.url, progress=False)
    with pytest.raises(dl.ChecksumError):
        dl.verify("oxford5k", root)
    assert url not in json.loads((root / "checksums.json").read_text() if (root / "checksums.json").exists() else "{}")
    # the real bytes are accepted (then the stand-in server lacks the image archive: 404)
    dest.unlink()
    serve(server, url, real)
    with pytest.raises(dl.DownloadError, match="oxbuild_images-v1.tgz: 404"):
        dl.download("oxford5k", root, mirror=server.url, progress=False)
    assert dest.read_bytes() == real
    assert dl.verify("oxford5k", root)[str(dest)] == dl.GND_SHA256["oxford5k"]


def test_original_set_reuses_the_unpacked_revisited_archive(server, tmp_path, monkeypatch):
    """oxford5k after roxford5k: the shared oxbuild archive is not fetched again, its images are
    linked; the original-format gnd (ok/junk, qidx) loads and is evaluated under 'classic'."""
    from retrieval.metrics import evaluate

    root = tmp_path / "data"
    images = stand_in_oxford(server, monkeypatch)
    dl.download("roxford5k", root, mirror=server.url, progress=False)
    unpin_gnd(monkeypatch, "oxford5k")
    qs = images[-2:]
    gnd = [{"bbx": [0, 0, 20, 16], "ok": [images.index(q), 0], "junk": [1]} for q in qs]
    serve(server, url_of("oxford5k", "gnd_oxford5k.pkl"),
          pickle.dumps({"imlist": images, "qimlist": qs, "qidx": [images.index(q) for q in qs], "gnd": gnd}))
    archive = served_path(url_of("oxford5k", "oxbuild_images-v1.tgz"))
    fetched_before = [p for p, _ in server.log].count(archive)
    dl.download("oxford5k", root, mirror=server.url, progress=False)
    assert [p for p, _ in server.log].count(archive) == fetched_before == 1
    for n in images:
        a, b = root / "test" / "roxford5k" / "jpg" / f"{n}.jpg", root / "test" / "oxford5k" / "jpg" / f"{n}.jpg"
        assert b.read_bytes() == a.read_bytes() and b.stat().st_ino == a.stat().st_ino  # hard link
    marker = json.loads((root / "downloads" / "oxford5k" / "oxbuild_images-v1.tgz.extracted.json").read_text())
    assert marker["reused_from"] == "roxford5k" and sorted(marker["files"]) == sorted(f"{n}.jpg" for n in images)
    ds = datasets.get_test("oxford5k", root=root)
    assert ds.n_db == 6 and ds.n_query == 2 and ds.qidx == [4, 5]
    ranks = np.arange(6)[::-1, None].repeat(2, axis=1)        # db 5, 4, ..., 0 for both queries
    res = evaluate(ranks, ds.gnd, kappas=(1,))
    assert set(res) == {"classic"}
    # query 0: positives 4 and 0 at ranks 1 and 5, junk 1 at rank 4 -> junk-free positions 1, 4
    ap0 = ((0 / 1 + 1 / 2) + (1 / 4 + 2 / 5)) / 2 / 2
    ap1 = ((1 + 1) + (1 / 4 + 2 / 5)) / 2 / 2             # positives 5 (position 0) and 0 (4)
    assert res["classic"]["map"] == pytest.approx((ap0 + ap1) / 2, rel=1e-12)
    dl.download("oxford5k", root, mirror=server.url, progress=False)   # finished: nothing fetched
    assert [p for p, _ in server.log].count(archive) == 1


def test_caffe_features_are_in_the_table_with_their_hash_prefix(server, tmp_path):
    base = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/imagenet/"
    expected = {"vgg16": "imagenet-caffe-vgg16-features-d369c8e.pth",
                "resnet50": "imagenet-caffe-resnet50-features-ac468af.pth",
                "resnet101": "imagenet-caffe-resnet101-features-10a101d.pth",
                "resnet152": "imagenet-caffe-resnet152-features-1011020.pth"}
    for backbone, filename in expected.items():
        (f,) = dl.resource(f"imagenet-caffe-{backbone}").files
        assert f.url == base + filename and f.dest == f"networks/imagenet/{filename}" and f.base == "data"
        assert f.sha256 == filename.rsplit("-", 1)[1][:-4]
        assert f"imagenet-caffe-{backbone}" in dl.GROUPS["imagenet"]
    serve(server, base + expected["resnet101"], b"not the caffe weights")
    with pytest.raises(dl.ChecksumError, match="expected 10a101d"):
        dl.download("imagenet-caffe-resnet101", tmp_path / "data", mirror=server.url, progress=False)
    assert not (tmp_path / "data" / "networks" / "imagenet" / expected["resnet101"]).exists()

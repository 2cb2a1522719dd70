"""Resumable, verified transfers: HTTP with ``Range`` resume and mirrors, checksums (pinned or recorded on
first use), and archives unpacked safely. The mechanics under :mod:`retrieval.datasets.download`, which
holds the table of what to download and where it goes.

Transfers go to a hidden ``.<name>.part`` file next to the destination, resume with an HTTP ``Range``
request after an interruption, and are renamed into place only once complete and verified; archives
are unpacked into a temporary folder and moved into place only when the whole archive read cleanly.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..io import atomic_write_json, file_hash

CHUNK = 1 << 20
USER_AGENT = "landmark-retrieval-lab/0.1 (python urllib)"


class DownloadError(RuntimeError):
    """A download that cannot complete: no network, HTTP error, disk full, bad archive."""


class IncompleteDownload(DownloadError):
    """The transfer stopped early; the ``.part`` file is kept and the next attempt resumes it."""


class ChecksumError(DownloadError):
    """The downloaded (or placed) file's hash differs from the expected one."""


# --------------------------------------------------------------------------- checksums
class ChecksumRegistry:
    """``<root>/checksums.json``: sha256 and size of files with no published checksum, recorded on
    their first download (keyed by the official URL) and checked on every later one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text()) if self.path.exists() else {}
        except ValueError as e:
            raise ValueError(f"{self.path}: not valid JSON ({e}); fix or delete it (it only records "
                             "hashes of earlier downloads)") from e

    def get(self, url: str) -> str | None:
        entry = self.entries.get(url)
        return entry["sha256"] if entry else None

    def record(self, url: str, sha256: str, size: int) -> None:
        self.entries[url] = {"sha256": sha256, "bytes": int(size), "recorded": time.strftime("%Y-%m-%d")}
        atomic_write_json(self.path, self.entries)

    def forget(self, url: str) -> None:
        if self.entries.pop(url, None) is not None:
            atomic_write_json(self.path, self.entries)


def check_hash(path: Path, expected: str | None, algorithm: str, source: str) -> None:
    if not expected:
        return
    got = file_hash(path, algorithm)
    if not got.startswith(expected.lower()):
        raise ChecksumError(f"{source}: {algorithm} mismatch for {path}: expected {expected}, got {got} "
                            "(corrupt or changed upstream)")


# --------------------------------------------------------------------------- HTTP
def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def mirrored(url: str, mirror: str | None) -> str:
    """``url`` served by ``mirror`` (a base URL holding ``<host>/<path>`` of the official URL)."""
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def _total_from_range(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    if value and "/" in value and value.rsplit("/", 1)[1].strip().isdigit():
        return int(value.rsplit("/", 1)[1])
    return None


def _transfer(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size with a Range request."""

    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range past the end: complete already, or the file changed
            if _total_from_range(e.headers.get("Content-Range")) == offset:
                return
            part.unlink()
            raise IncompleteDownload(f"{url}: the server refused to resume at byte {offset}; restarting") from e
        if e.code == 404:
            raise DownloadError(f"{url}: 404 Not Found (moved or removed upstream? see data/README.md "
                                "for the sources)") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {_host(url)} for {url} ({e.reason}): no network, a proxy "
                            "needed, or the server is down") from e
    except (TimeoutError, socket.timeout, ConnectionError) as e:
        raise IncompleteDownload(f"{url}: connection failed ({e})") from e
    with resp:
        length = resp.headers.get("Content-Length")
        if offset and resp.status == 206:
            total = _total_from_range(resp.headers.get("Content-Range"))
            total = total if total is not None else (offset + int(length) if length else None)
            mode = "ab"
        else:  # a full response: the server ignored the range (or nothing to resume)
            offset, mode = 0, "wb"
            total = int(length) if length else None
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if free < total - offset:
                raise DownloadError(f"disk full: {part.parent} has {free / 1e9:.2f} GB free, "
                                    f"{url} needs {(total - offset) / 1e9:.2f} GB more")
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=desc, disable=not progress, leave=False) as bar:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (http.client.IncompleteRead, TimeoutError, socket.timeout, ConnectionError) as e:
                    raise IncompleteDownload(f"{url}: transfer interrupted ({type(e).__name__}); "
                                             f"{part} is kept and resumed next time") from e
                if not block:
                    break
                try:
                    fh.write(block)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise DownloadError(f"disk full while writing {part} (from {url}); free space and "
                                            "rerun: the download resumes") from e
                    raise
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise IncompleteDownload(f"{url}: transfer stopped at {size} of {total} bytes; {part} is kept and "
                                 "resumed next time")


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
          progress: bool = True, retries: int = 3, timeout: float = 60.0, backoff: float = 2.0,
          source: str | None = None) -> str:
    """Download ``url`` to ``dest`` (resumable, verified, atomic); returns the file's sha256.

    The bytes go to ``.<dest name>.part`` (kept on interruption; an interrupted transfer is resumed
    with a Range request, up to ``retries`` times here and again on the next call). Only a complete
    file whose ``sha256`` (prefix or full) and ``md5`` match is renamed to ``dest``; on a mismatch
    the partial file is deleted and :class:`ChecksumError` raised. ``source`` names the URL in
    messages (the official one when ``url`` is a mirror).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    source = source or url
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress, desc=dest.name)
            break
        except IncompleteDownload:
            if attempt == retries:
                raise
            time.sleep(backoff * 2 ** attempt)
    try:
        check_hash(part, sha256, "sha256", source)
        check_hash(part, md5, "md5", source)
    except ChecksumError:
        part.unlink()
        raise
    digest = file_hash(part)
    os.replace(part, dest)
    return digest


def fetch_md5(url: str, timeout: float = 60.0) -> str:
    """The md5 in a published md5sum file (``<32 hex>  <name>``)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                    timeout=timeout) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason} (md5 file)") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {_host(url)} for {url} ({e.reason})") from e
    token = text.split()[0].lower() if text.split() else ""
    if len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
        raise DownloadError(f"{url}: not an md5sum file (starts with {text[:40]!r})")
    return token


# --------------------------------------------------------------------------- archives
def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    files = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts:
            raise DownloadError(f"{archive}: member {m.name!r} points outside the extraction folder; refused")
        if m.isfile():
            files.append(m)
        elif not m.isdir():
            raise DownloadError(f"{archive}: member {m.name!r} is a link or device; refused")
    return files


def extract_archive(archive: str | os.PathLike, into: str | os.PathLike, flatten: bool = False,
                    progress: bool = True) -> list[str]:
    """Unpack a tar (gz/bz2/xz) ``archive`` into ``into``; returns the member paths written,
    relative to ``into``. ``flatten`` drops sub-folders (every file lands in ``into``).

    Members are unpacked to a temporary folder first and moved into place only once the whole
    archive read cleanly, so a truncated or corrupt archive leaves ``into`` as it was
    (:class:`DownloadError` naming the archive). Absolute paths, ``..`` and links are refused.
    """

    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    tmp = into.parent / f".{into.name}.extract-{archive.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    written: list[str] = []
    try:
        with tarfile.open(archive) as tar:
            members = _safe_members(tar, archive)
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
                rel = Path(Path(m.name).name) if flatten else Path(*Path(m.name).parts)
                target = tmp / rel
                if flatten and target.exists():
                    raise DownloadError(f"{archive}: two members named {rel} (cannot flatten)")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                written.append(rel.as_posix())
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DownloadError(f"disk full while extracting {archive} into {into}") from e
        raise DownloadError(f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); it is "
                            "deleted, rerun to download it again") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for rel in written:
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return written

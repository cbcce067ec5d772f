"""Fetching a dataset's official archive, checked by md5, and the error for a dataset that is not there."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class MissingDataset(FileNotFoundError):
    """A dataset that is not where the config says; the message says where and how to get it."""


def md5(path: Path, chunk: int = 1 << 20) -> str:
    """The MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_archive(url: str, dest: Path, checksum: str) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; keep it only if its md5 is ``checksum``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=60) as r:
                shutil.copyfileobj(r, tmp)
            tmp.close()
            got = md5(Path(tmp.name))
            if got != checksum:
                raise RuntimeError(f"{url} has md5 {got}, expected {checksum}: the download is corrupt, try again")
            Path(tmp.name).replace(dest)
        finally:
            Path(tmp.name).unlink(missing_ok=True)


def download_and_unpack(root: Path, url: str, checksum: str) -> None:
    """Fetch and md5-check an archive into ``root`` (kept, so a second call only unpacks), then unpack it there."""
    archive = root / url.rsplit("/", 1)[-1]
    if not (archive.is_file() and md5(archive) == checksum):
        download_archive(url, archive, checksum)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")  # "data": no absolute paths, links out, or devices

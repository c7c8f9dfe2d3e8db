"""Fetching the official dataset files: checksum-verified downloads that never leave a partial file.

Only :func:`_fetch` touches the network (tests replace it). :func:`_obtain` is what each source calls when its
files are missing: download them when ``data.download`` allows it, else raise one
:class:`DatasetNotFoundError` saying where we looked, what we expected and where to get it by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["DOWNLOAD_TIMEOUT_S", "DatasetNotFoundError", "DownloadError", "RemoteFile", "download"]


#: Seconds urllib waits on any one socket operation (connect or read) before giving up.
DOWNLOAD_TIMEOUT_S = 30.0


class DownloadError(OSError):
    """A download failed (network, HTTP, short read) or did not match its published checksum.

    Whatever was received has been deleted: nothing is ever left under the destination name.
    """


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are absent and could not (or were not allowed to) be downloaded.

    The message says where we looked, which files were expected and where to get them.
    """


@dataclass(frozen=True)
class RemoteFile:
    """One file of an official distribution: its name, the URLs to try in order, its published md5."""

    name: str
    urls: tuple[str, ...]
    md5: str


def _fetch(url: str, out: BinaryIO, timeout: float) -> None:
    """Stream ``url`` into ``out``. The only function here that touches the network (tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    # usedforsecurity=False: an integrity check against published sums, allowed on FIPS builds too.
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest`` and check it against the published ``md5``; returns ``dest``.

    The bytes go to a temporary file in ``dest``'s directory (same file system, so the final
    ``os.replace`` is atomic) and are renamed only once the checksum matches: an interrupted, truncated
    or wrong download never appears under the final name, and concurrent downloads cannot interleave.
    Raises :class:`DownloadError` on any failure.
    """
    dest = Path(dest)
    # Folders this call creates are removed again if it fails: a failed attempt leaves nothing behind.
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    tmp: Path | None = None
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise DownloadError(f"cannot write the download of {url} into {dest.parent}: {exc}") from None
        tmp = Path(tmp_name)
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f, timeout)
        # URLError/HTTPError/timeouts are OSErrors; IncompleteRead & co. are HTTPException; a malformed
        # URL is a ValueError. All mean "no usable file", which the caller reports in one message.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(f"could not download {url}: {reason}") from None
        got = _md5(tmp)
        if got != md5.lower():
            raise DownloadError(
                f"download of {url} failed its checksum (md5 {got}, published {md5}); the file was discarded"
            )
        os.replace(tmp, dest)
    except BaseException:  # also Ctrl-C: never leave a partial file or an empty folder behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for d in created:  # deepest first; stops at the first folder something else has written into
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return dest


def _by_hand(files: Sequence[RemoteFile]) -> str:
    """Where to get ``files`` from by hand: their URLs, or their names plus a common base URL."""
    bases = {f.urls[0].rsplit("/", 1)[0] + "/" for f in files}
    if len(files) > 1 and len(bases) == 1:
        return f"{', '.join(f.name for f in files)} from {bases.pop()}"
    return ", ".join(f.urls[0] for f in files)


def _obtain(files: Sequence[RemoteFile], root: Path, dataset: str, looked_for: str, allow: bool) -> None:
    """Download the missing official ``files`` into ``root``, or raise one :class:`DatasetNotFoundError`."""
    if not allow:
        raise DatasetNotFoundError(
            f"{dataset} not found: looked in {root} for {looked_for}. Download {_by_hand(files)} into {root}, "
            "or set data.download=true to have it fetched automatically (checksums verified)"
        )
    for f in files:
        errors = []
        for url in f.urls:  # mirrors in order; the first one that delivers the right bytes wins
            try:
                download(url, root / f.name, f.md5)
                break
            except DownloadError as exc:
                errors.append(str(exc))
        else:
            raise DatasetNotFoundError(
                f"{dataset} not found: looked in {root} for {looked_for}, and the download failed "
                f"({'; '.join(errors)}). Fetch {_by_hand(files)} by hand into {root}, or set data.download=false "
                "to skip the download attempt"
            )

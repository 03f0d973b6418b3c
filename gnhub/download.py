"""Downloading a source file over HTTP(S): resumable, retried, bounded, hash-checked before anything
reads it.

Standard library only (no torch, no third-party HTTP client). A download goes to `DEST.part`,
is resumed from there with an HTTP Range request after an interruption, and is renamed to DEST
only once its sha256 matches; a mismatch deletes it (a resumed one is fetched once more from the
start first). The part is gnhub's own by place (its cache's download folder, under the fetch's
lock); files.py opens it (never through a link), renames and removes it. Bounds (gnhub/settings.py): a size ceiling
(the server's Content-Length where it names one, checked against GNHUB_MAX_DOWNLOAD_BYTES, else
counted as the body arrives; a file that passes it is deleted), a stall deadline (under
STALL_BYTES in GNHUB_DOWNLOAD_STALL_SECONDS: retried, resuming) and a total deadline
(GNHUB_DOWNLOAD_TOTAL_SECONDS over all tries). A part stopped by a deadline is within the
ceiling and is kept for the next run to resume.
"""
from __future__ import annotations

import http.client
import os
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import GnhubError
from .files import open_partial, remove_inside, rename_new, sha256_file
from .settings import download_stall_seconds, download_total_seconds, max_download_bytes

__all__ = ["BACKOFF", "CHUNK", "download", "RETRIES"]

CHUNK = 1 << 20
STALL_BYTES = 64 << 10  # a transfer that receives less than this in the stall deadline is stalled
RETRIES = 3  # further tries after a failed connection, a stall or a cut-off transfer
BACKOFF = 0.5  # seconds before the first retry, doubled after each


def download(url: str, dest: Path, sha256: str | None = None, sha256_prefix: str | None = None,
             quiet: bool = True, hint: str = "") -> str:
    """Fetches `url` into `dest` (via `dest.part`, resumed if present) and checks its sha256:
    the full one where known, else the published prefix. Returns the sha256. `hint` ends errors
    that mean the file cannot be had (what to try instead)."""
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GnhubError(f"{dest.parent}: cannot write there ({e.strerror}); set GNHUB_CACHE to another "
                         "folder") from None
    if os.path.lexists(dest):
        raise GnhubError(f"{dest}: already exists; a download never replaces a file: remove it first")
    expected = sha256 or sha256_prefix
    if not _is_real_file(part):  # a link or a folder by that name is no part of a download
        remove_inside(part, part.parent)
    resumed = _is_real_file(part)
    bounds = _Bounds(max_download_bytes(), download_stall_seconds(), download_total_seconds())
    while True:
        _fetch(url, part, quiet, hint, bounds)
        digest = sha256_file(part)
        if not expected or digest.startswith(expected.lower()):
            break
        _discard(part)
        if not resumed:
            raise GnhubError(f"{url}: sha256 {digest} does not match the expected {expected}; the download was "
                             "deleted (a corrupt mirror or a changed file): try again, or check GNHUB_SOURCE_MIRROR")
        resumed = False  # a part kept from an earlier run, of another file: once more from the start
    rename_new(part, dest, "GNHUB_CACHE")
    return digest


def _fetch(url: str, part: Path, quiet: bool, hint: str, bounds: _Bounds) -> None:
    """The transfer, retried and resumed within the bounds."""
    for attempt in range(RETRIES + 1):
        try:
            _transfer(url, part, quiet, bounds)
            return
        except _TooLarge as e:
            _discard(part)
            raise GnhubError(f"{url}: {e}; nothing was kept. Check the URL or GNHUB_SOURCE_MIRROR (a wrong server), "
                             "or raise GNHUB_MAX_DOWNLOAD_BYTES if the file really is that large") from None
        except _Retry as e:
            timed_out = isinstance(e, _TimeUp) or bounds.left() <= 0
            if not timed_out and attempt < RETRIES:
                time.sleep(max(0.0, min(BACKOFF * 2**attempt, bounds.left())))
                continue
            kept = _size(part)
            kept = f"; the {kept} bytes so far are kept in {part} and the next run resumes them" if kept else ""
            if timed_out:
                raise GnhubError(f"{url}: not downloaded within {bounds.total:g} s{kept}; run again to resume, "
                                 f"or raise GNHUB_DOWNLOAD_TOTAL_SECONDS for a slow link{hint}") from None
            raise GnhubError(f"{url}: download failed after {RETRIES + 1} tries ({e}){kept}{hint}") from None


def _is_real_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class _Retry(Exception):
    """A failure worth another try: no connection, a stall, a cut-off transfer, a 5xx."""


class _TimeUp(_Retry):
    """The total deadline passed: no further try."""


class _TooLarge(Exception):
    """The file passes the size ceiling: deleted, no further try."""


class _Bounds:
    """The size ceiling, the stall deadline and the total deadline of one download."""

    def __init__(self, max_bytes: int, stall: float, total: float):
        self.max_bytes, self.stall, self.total = max_bytes, stall, total
        self.end = time.monotonic() + total

    def left(self) -> float:
        return self.end - time.monotonic()


def _size(path: Path) -> int:
    return os.lstat(path).st_size if _is_real_file(path) else 0


def _discard(part: Path) -> None:
    remove_inside(part, part.parent)


def _transfer(url: str, part: Path, quiet: bool, bounds: _Bounds) -> None:
    have = _size(part)
    if have > bounds.max_bytes:  # a part of an earlier, unbounded run: start over
        have = 0
    headers = {"User-Agent": "gnhub", **({"Range": f"bytes={have}-"} if have else {})}
    request = urllib.request.Request(url, headers=headers)
    if bounds.left() <= 0:
        raise _TimeUp()
    try:
        response = urllib.request.urlopen(request, timeout=min(bounds.stall, bounds.left()))  # noqa: S310 - http(s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the kept part is already complete (or longer than the file)
            return
        if e.code >= 500 or e.code == 429:
            raise _Retry(f"HTTP {e.code}") from None
        raise GnhubError(f"{url}: HTTP {e.code} {e.reason}; the file is not there (or not for you): check the URL, "
                         "or GNHUB_SOURCE_MIRROR") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(str(getattr(e, "reason", e))) from None
    with response:
        resumed = response.status == 206
        if have and not resumed:  # the server ignored the Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if total is not None and total > bounds.max_bytes:
            raise _TooLarge(f"the server announces {total} bytes, above gnhub's limit of {bounds.max_bytes}")
        bar = _Progress(url, total, have, quiet)
        mark, since = have, time.monotonic()  # the stall deadline: STALL_BYTES more by since + stall
        try:
            with open_partial(part, resumed) as f:
                while True:
                    chunk = response.read1(min(CHUNK, bounds.max_bytes + 1 - have))
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)
                    if have > bounds.max_bytes:
                        raise _TooLarge(f"more than {bounds.max_bytes} bytes (gnhub's limit) arrived and the body "
                                        "had not ended")
                    bar.update(have)
                    now = time.monotonic()
                    if have - mark >= STALL_BYTES:
                        mark, since = have, now
                    elif now - since > bounds.stall:
                        raise _Retry(_stalled(bounds, have))
                    if now > bounds.end:
                        raise _TimeUp()
        except TimeoutError:
            raise (_TimeUp() if bounds.left() <= 0 else _Retry(_stalled(bounds, have))) from None
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.errno in (28, 27):  # ENOSPC, EFBIG: no point retrying
                raise GnhubError(f"{part}: writing failed ({e.strerror}); free some space or set GNHUB_CACHE "
                                 "(the part downloaded so far is kept and resumed)") from None
            raise _Retry(f"connection lost after {have} bytes: {e}") from None
        finally:
            bar.close()
    if total is not None and have != total:
        raise _Retry(f"got {have} of {total} bytes")


def _stalled(bounds: _Bounds, have: int) -> str:
    return (f"stalled at {have} bytes: under {STALL_BYTES >> 10} KiB in {bounds.stall:g} s; "
            "GNHUB_DOWNLOAD_STALL_SECONDS sets that wait")


class _Progress:
    """Bytes, rate and time left on one stderr line; silent when quiet."""

    def __init__(self, url: str, total: int | None, start: int, quiet: bool):
        self.name, self.total, self.start, self.quiet = url.rsplit("/", 1)[-1], total, start, quiet
        self.t0 = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < 0.2:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-6)
        text = f"{done / 2**20:.1f} MiB"
        if self.total:
            left = (self.total - done) / rate if rate else 0
            text += f" / {self.total / 2**20:.1f} MiB ({100 * done / self.total:.0f}%), {int(left)} s left"
        sys.stderr.write(f"\rdownloading {self.name}: {text}, {rate / 2**20:.1f} MiB/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet and self.last != self.t0:
            sys.stderr.write("\n")

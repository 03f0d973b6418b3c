"""Files on disk, safely: hashing (once per version of a file), and writing files and
directories atomically, never over what is not gnhub's. Temporaries carry this host and process,
so a killed run's debris is removed by the next gnhub write in that folder. No torch here."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import GnhubError
from .settings import cache_dir

__all__ = ["HASHES_FILE", "atomic_dir", "check_output_file", "check_replaceable", "checked_sha256", "sha256_file",
    "sweep", "write_atomic"]


def sha256_file(path: str | Path) -> str:
    """In 16 MiB chunks: hashing releases the GIL, so few chunks let it run beside other work."""
    import hashlib  # OpenSSL's load: paid where a file is hashed, not by every command

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


HASHES_FILE = "hashes.json"  # in the cache: path -> sha256 of files already hashed, by their stat


def checked_sha256(path: Path, trust_store: bool = True) -> str:
    """The sha256 of `path`, hashed once per version of the file: a file whose path, size,
    inode and modification time (ns) are unchanged since it was hashed is not read again
    (as git's index does; files modified in the last 2 s are always hashed). The store is a
    speed-up only: where the cache cannot hold it, every call hashes. Without `trust_store` the
    file is hashed in full (and the store updated): a bit flip with its mtime restored is found."""
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_ino, st.st_mtime_ns]
    store = cache_dir() / HASHES_FILE
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    row = known.get(key)
    if trust_store and isinstance(row, list) and len(row) == 2 and row[0] == stamp and isinstance(row[1], str):
        return row[1]
    digest = sha256_file(path)
    if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
        return digest  # modified just now: a change within the clock's resolution would keep the stamp
    known[key] = [stamp, digest]
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(store, lambda t: t.write_text(json.dumps(known), encoding="utf-8"))
    except (GnhubError, OSError):
        pass  # a read-only, missing or misplaced cache: hash again next time
    return digest


def check_replaceable(dest: Path, force: bool, what: str, owned: Callable[[Path], bool]) -> None:
    """Refuses, before any work, to replace `dest` unless `force` is given and `dest` is gnhub's
    own output (`owned(dest)`): never a user's folder, a file, or the current directory."""
    if not dest.exists() and not dest.is_symlink():
        return
    if not force:
        raise GnhubError(f"{dest}: already exists; choose another output or pass --force")
    here = Path.cwd().resolve()
    if dest.is_symlink() or not dest.is_dir():
        raise GnhubError(f"{dest}: is not a directory; --force replaces only {what}: choose another output")
    if dest.resolve() == here or dest.resolve() in here.parents:
        raise GnhubError(f"{dest}: is the current directory or holds it; choose another output")
    if not owned(dest):
        raise GnhubError(f"{dest}: is not {what} (it holds other files); --force replaces only {what}: "
                         "choose another output")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", os.uname().nodename)[:40] or "host"  # socket.gethostname()


def _tag() -> str:
    """This host and process, in the names of the temporaries it makes."""
    return f"{_HOST}-{os.getpid()}"


def sweep(folder: Path) -> None:
    """Cleans up after killed gnhub runs on this host in `folder`: `.NAME.HOST-PID.*.tmp`
    directories and `.NAME.HOST-PID.tmp` files whose process is gone are removed, except that an
    output moved aside to be replaced (`.NAME.HOST-PID.*.old.tmp/x`) goes back to NAME if nothing
    took its place."""
    pattern = re.compile(r"\.(.+)" + re.escape(f".{_HOST}-") + r"(\d+)\.(?:[^/]*\.)?tmp")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.fullmatch(p.name)
        if not m or _alive(int(m.group(2))):
            continue
        real_dir = p.is_dir() and not p.is_symlink()
        kept, dest = p / "x", folder / m.group(1)
        if real_dir and p.name.endswith(".old.tmp") and kept.exists() and not os.path.lexists(dest):
            os.replace(kept, dest)
        shutil.rmtree(p, ignore_errors=True) if real_dir else p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


@contextmanager
def atomic_dir(dest: str | Path, force: bool, what: str, owned: Callable[[Path], bool]):
    """Yields a fresh temporary directory beside `dest` that becomes `dest` on success.

    Entering it checks that `dest` may be replaced (see `check_replaceable`) and that its folder
    is writable, before any work is done. On any error (or interrupt) the temporary directory is
    removed and an existing `dest` is left as it was. Files get the umask's ordinary modes.
    """
    dest = Path(dest)
    check_replaceable(dest, force, what, owned)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep(dest.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_tag()}.", suffix=".tmp", dir=dest.parent))
    except OSError as e:
        raise GnhubError(f"{dest}: cannot write there ({e.strerror}); choose another output") from None
    mask = _umask()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the result is an ordinary directory
        _replace(tmp, dest)
    except OSError as e:
        raise GnhubError(f"{dest}: writing failed ({e.strerror}); nothing was written: free some space "
                         "or choose another output") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace(tmp: Path, dest: Path) -> None:
    """Renames `tmp` to `dest`; an existing `dest` is put back if that fails or is interrupted."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_tag()}.", suffix=".old.tmp", dir=dest.parent))
    os.replace(dest, old / "x")
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old / "x", dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: str | Path, flag: str = "the output") -> Path:
    """Refuses, before any work, a file output that cannot be written: its folder missing or not
    writable, or a directory in its place."""
    path = Path(path)
    if path.is_dir():
        raise GnhubError(f"{path}: is a directory; {flag} must be a file path")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise GnhubError(f"{path}: cannot write there ({e.strerror}); choose another {flag}") from None
    return path


def write_atomic(path: Path, write: Callable[[Path], object], flag: str = "output") -> None:
    """`write(tmp)` then rename onto `path`; a failed write (disk full) leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GnhubError(f"{path}: writing failed ({e.strerror}); free some space or choose another {flag}") from None

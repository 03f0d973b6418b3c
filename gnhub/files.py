"""The one owner of the files gnhub creates, replaces and removes (the contract: docs/files.md).

- Temporaries are `mkstemp`/`mkdtemp` names (`.gnhub-tmp.*`, `O_EXCL`), locked (`flock`) by the
  process that made them for as long as it lives; `sweep` removes only those whose lock is free,
  so no pid, host or namespace is ever guessed.
- gnhub claims a file only by content: each folder it writes into has a ledger
  (`.gnhub-files.jsonl`) of the sha256 of every file it wrote there, appended *before* the file
  is renamed into place. A file is gnhub's to replace or remove only while its content is one the
  ledger recorded for its name (an append-only log: while it begins so); a directory only while
  every file in it is. The ledger is also the folder's lock.
- Nothing is replaced without checking again, under the folder's lock, at the moment of the
  rename, and once more after it (what was there is swapped back if it changed meanwhile):
  renames never replace (`RENAME_NOREPLACE`) or swap (`RENAME_EXCHANGE`). Links are never followed.
No torch here.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from .errors import GnhubError
from .settings import cache_dir

__all__ = ["append_line", "check_output_file", "check_replaceable", "checked_sha256", "Folder", "foreign",
    "is_owned_tree", "LEDGER", "new_dir", "open_partial", "remove_if_empty", "remove_inside", "rename_new",
    "scratch_dir", "sha256_file", "sweep", "TMP_PREFIX", "write_file"]

TMP_PREFIX = ".gnhub-tmp."  # temporaries: gnhub's own by name, removed once their process is gone
LEDGER = ".gnhub-files.jsonl"  # per folder: {"name", "sha256"[, "size"]} of every file gnhub wrote there
LOCK_WAIT = 60.0  # seconds a one-off write waits for another gnhub process holding the folder

def sha256_file(path: str | Path) -> str:
    """In 16 MiB chunks: hashing releases the GIL, so few chunks let it run beside other work."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_prefix(path: Path, size: int) -> str | None:
    """The sha256 of the first `size` bytes of `path`; None if it is shorter."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size:
            chunk = f.read(min(size, 1 << 24))
            if not chunk:
                return None
            h.update(chunk)
            size -= len(chunk)
    return h.hexdigest()


def _sha256_fd(fd: int) -> tuple[str, int]:
    """The sha256 and size of an open file, read through `fd` itself (closing another descriptor
    of a file would drop this process's lock on it where flock is emulated by fcntl: NFS)."""
    h, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 24, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest(), offset


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
        write_file(store, json.dumps(known).encode(), replace_any=True)
    except (GnhubError, OSError):
        pass  # a read-only, missing or misplaced cache: hash again next time
    return digest


# -- the primitives: renames that never replace or that swap, locks, links never followed ---------

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_AT_FDCWD, _NOREPLACE, _EXCHANGE = -100, 1, 2


def _rename2(src: Path, dst: Path, flag: int) -> bool:
    """renameat2(src, dst, flag); False where the system or file system has no such rename."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Renames `src` to `dst`, never replacing anything at `dst` (EEXIST). Without
    RENAME_NOREPLACE: checked, then renamed, under the folder's lock that every gnhub writer takes."""
    if not _rename2(src, dst, _NOREPLACE):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)


def _lock_fd(fd: int, wait: float) -> bool:
    """flock(fd) exclusively, waiting up to `wait` seconds; False if another holder kept it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_real_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _failed(path: Path, e: OSError, flag: str) -> GnhubError:
    """One line for a write that failed: nothing was replaced; what to do."""
    if e.errno == errno.EEXIST:
        return GnhubError(f"{path}: appeared while gnhub was writing it; nothing was replaced: choose another {flag}")
    if e.errno == errno.ELOOP:
        return GnhubError(f"{e.filename or path}: is a link where gnhub writes; nothing was written: remove the link "
                          f"or choose another {flag}")
    return GnhubError(f"{path}: writing failed ({e.strerror}); nothing was written: free some space or choose "
                      f"another {flag}")


# -- the ledger: what gnhub wrote in a folder, by content; also the folder's lock ----------------

def _parse_ledger(data: bytes) -> dict[str, set[tuple[str, int | None]]]:
    """name -> {(sha256, size of the prefix it covers, None for the whole file)}; complete lines
    only (a line cut by a kill is ignored)."""
    known: dict[str, set[tuple[str, int | None]]] = {}
    for line in data.split(b"\n")[:-1]:
        try:
            row = json.loads(line)
            size = row.get("size")
            if isinstance(row["name"], str) and isinstance(row["sha256"], str) and (
                    size is None or (isinstance(size, int) and size >= 0)):
                known.setdefault(row["name"], set()).add((row["sha256"], size))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            continue
    return known


def _ledger(folder: Path) -> dict[str, set[tuple[str, int | None]]]:
    """The ledger of a folder this process does not hold; a link or not-a-file counts as none."""
    try:
        fd = os.open(folder / LEDGER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return {}
        return _parse_ledger(f.read())


def _open_ledger(folder: Path) -> int:
    """An fd of `folder`'s ledger, for reading and appending (created if absent; never a link)."""
    fd = os.open(folder / LEDGER, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, "not a regular file", str(folder / LEDGER))
    return fd


def _record(fd: int, name: str, digest: str, size: int | None = None) -> None:
    """Appends one line to a ledger open as `fd` (its folder's lock held)."""
    end = os.fstat(fd).st_size
    cut = end and os.pread(fd, 1, end - 1) != b"\n"  # a line cut by a kill ends here, not inside this one
    row = {"name": name, "sha256": digest, **({"size": size} if size is not None else {})}
    os.write(fd, (b"\n" if cut else b"") + (json.dumps(row) + "\n").encode())


def _owned_file(path: Path, known: dict) -> bool:
    """`path` is a real file whose content (or, for a log, whose beginning) the ledger records."""
    claims = known.get(path.name)
    if not claims or not _is_real_file(path):
        return False
    try:
        whole = sha256_file(path) if any(size is None for _, size in claims) else None
        return any(digest == (whole if size is None else _sha256_prefix(path, size)) for digest, size in claims)
    except OSError:
        return False


def is_owned_tree(path: Path) -> bool:
    """`path` is a real directory every file of which gnhub wrote, as its ledgers record (a
    sub-folder likewise); gnhub's own temporaries and ledgers aside."""
    if not _is_real_dir(path):
        return False
    known = _ledger(path)
    if not known:
        return False
    for name in os.listdir(path):
        if name == LEDGER or name.startswith(TMP_PREFIX):
            continue
        sub = path / name
        if not (is_owned_tree(sub) if _is_real_dir(sub) else _owned_file(sub, known)):
            return False
    return True


def foreign(folder: Path) -> list[str]:
    """The names in `folder` that are not gnhub's: files whose content its ledger does not record,
    folders not wholly gnhub's; its ledger and temporaries aside."""
    known = _ledger(folder)
    return [name for name in sorted(os.listdir(folder)) if name != LEDGER and not name.startswith(TMP_PREFIX)
            and not (is_owned_tree(folder / name) if _is_real_dir(folder / name) else _owned_file(folder / name,
                                                                                                 known))]


# -- folders gnhub writes files into ------------------------------------------------------------

_locked: dict[tuple[int, int], list] = {}  # ledgers this process holds: (device, inode) -> [opens, fd, known]


class Folder:
    """A folder gnhub writes files into, locked against other gnhub writers while open (`flock` on
    its ledger). `hold=True` holds it for a whole run (a second run is one error); else each write
    waits up to LOCK_WAIT s. A folder this process holds already is not locked again."""

    def __init__(self, path: str | Path, flag: str = "output", hold: bool = False):
        self.path, self.flag = Path(path), flag
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = _open_ledger(self.path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise GnhubError(f"{self.path / LEDGER}: is a link or not a file, where gnhub keeps its ledger; "
                                     f"remove it or choose another {flag}") from None
                raise GnhubError(f"{self.path}: cannot write there ({e.strerror}); choose another {flag}") from None
            st = os.fstat(fd)
            self._key = (st.st_dev, st.st_ino)
            if self._key in _locked:
                os.close(fd)  # held by this process already: one descriptor, one lock, one ledger in memory
                break
            try:
                locked = _lock_fd(fd, 0 if hold else LOCK_WAIT)
            except OSError as e:
                os.close(fd)
                raise GnhubError(f"{self.path}: cannot be locked ({e.strerror}); gnhub writes only where file locks "
                                 f"work: choose another {flag}") from None
            if not locked:
                os.close(fd)
                raise GnhubError(f"{self.path}: another gnhub process is writing there; wait for it or choose "
                                 f"another {flag}")
            if _inode(self.path / LEDGER) == self._key:
                _locked[self._key] = [0, fd, _parse_ledger(_read_fd(fd))]
                sweep(self.path)
                break
            os.close(fd)  # an empty ledger its holder removed meanwhile: lock the one there now
        _locked[self._key][0] += 1
        self._fd, self.known = _locked[self._key][1], _locked[self._key][2]
        self._open = True

    def close(self) -> None:
        """Lets the folder go; a ledger left empty is removed (it claims nothing)."""
        if self._open:
            self._open = False
            _locked[self._key][0] -= 1
            if not _locked[self._key][0]:
                del _locked[self._key]
                with suppress(OSError):
                    if os.fstat(self._fd).st_size == 0 and _inode(self.path / LEDGER) == self._key:
                        os.unlink(self.path / LEDGER)
                os.close(self._fd)  # the lock goes with the descriptor

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> set[str]:
        """Everything in the folder but gnhub's ledger and temporaries."""
        return {n for n in os.listdir(self.path) if n != LEDGER and not n.startswith(TMP_PREFIX)}

    def owns(self, name: str) -> bool:
        """`name` is a file whose content gnhub wrote (or is absent)."""
        path = self.path / name
        return not os.path.lexists(path) or _owned_file(path, self.known)

    def record(self, name: str, digest: str, size: int | None = None) -> None:
        _record(self._fd, name, digest, size)
        self.known.setdefault(name, set()).add((digest, size))

    def write(self, name: str, data: bytes | Callable[[BinaryIO], object], replace_any: bool = False,
              log: bool = False) -> Path:
        """Writes `name` atomically: into a private temporary, recorded in the ledger, then renamed
        into place, where nothing is (never replacing) or over a file whose content gnhub wrote
        (checked again now, and after the swap). `replace_any`: any regular file there is gnhub's
        (its own folders; nothing recorded). `log`: an append-only log, gnhub's while it begins so."""
        path = self.path / name
        try:
            fd, tmp = _temp_file(self.path)
        except OSError as e:
            raise _failed(path, e, self.flag) from None
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                data(f) if callable(data) else f.write(data)
            os.fchmod(fd, 0o666 & ~_umask())
            digest, size = _sha256_fd(fd)
            before = _lstat(path)
            if before is not None and not (stat.S_ISREG(before.st_mode) and (
                    replace_any or _owned_file(path, self.known))):
                raise GnhubError(f"{path}: exists and is not a file gnhub wrote (or it changed since); nothing was "
                                 f"replaced: move it away or choose another {self.flag}")
            if not replace_any:
                self.record(name, digest, size if log and size else None)  # an empty prefix would claim all
            if before is None:
                _rename_noreplace(tmp, path)
            elif _rename2(tmp, path, _EXCHANGE):
                if _stamp(_lstat(tmp)) != _stamp(before):  # changed between the check and the swap: put back
                    _rename2(tmp, path, _EXCHANGE)
                    raise GnhubError(f"{path}: changed while gnhub was writing it; nothing was replaced: choose "
                                     f"another {self.flag}")
            else:
                os.rename(tmp, path)  # no RENAME_EXCHANGE here: checked just now, under the lock
        except OSError as e:
            raise _failed(path, e, self.flag) from None
        finally:
            os.close(fd)
            if _is_real_file(tmp):
                with suppress(OSError):
                    os.unlink(tmp)
        return path

    def remove(self, name: str) -> None:
        """Removes `name` if it is a file whose content gnhub wrote, or a folder all of whose files
        are: moved aside first, checked there, put back if it is not gnhub's after all."""
        path = self.path / name
        if not os.path.lexists(path):
            return
        tree = _is_real_dir(path)

        def ours(p: Path) -> bool:
            return is_owned_tree(p) if tree else _owned_file(p, {p.name: self.known.get(name, set())})

        if not ours(path):
            raise GnhubError(f"{path}: is not gnhub's (or changed since gnhub wrote it); nothing was removed: move it "
                             f"away or choose another {self.flag}")
        try:
            _move_aside(path, ours, self.flag)
        except OSError as e:
            raise _failed(path, e, self.flag) from None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _stamp(st: os.stat_result | None) -> tuple | None:
    return st and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _inode(path: Path) -> tuple[int, int] | None:
    st = _lstat(path)
    return st and (st.st_dev, st.st_ino)


def _read_fd(fd: int) -> bytes:
    parts, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def write_file(path: str | Path, data: bytes | Callable[[BinaryIO], object], flag: str = "output",
               replace_any: bool = False, log: bool = False) -> Path:
    """One file, atomically, into its folder (see Folder.write): a new file, or one gnhub wrote."""
    path = Path(path)
    with Folder(path.parent, flag) as folder:
        return folder.write(path.name, data, replace_any, log)


def append_line(path: Path, text: str, flag: str = "output") -> None:
    """Appends to one of gnhub's append-only logs, never through a link: a new log is written as
    any file is (its beginning recorded, write_file), later lines appended in place."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        write_file(path, text.encode("utf-8"), flag, log=True)
        return
    except OSError as e:
        raise GnhubError(f"{path}: cannot append there ({e.strerror}; a link or not a file?); choose another "
                         f"{flag}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GnhubError(f"{path}: is not a regular file; gnhub appends only to its own logs: choose another "
                             f"{flag}")
        held = _locked.get(_inode(path.parent / LEDGER))  # a folder this process holds: its ledger in memory
        if not _owned_file(path, held[2] if held else _ledger(path.parent)):
            raise GnhubError(f"{path}: is not a log gnhub wrote (or it changed since); nothing was appended: move it "
                             f"away or choose another {flag}")
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def open_partial(path: Path, resume: bool) -> BinaryIO:
    """A partial download, gnhub's own (in its cache's download folder), opened to be continued
    or started over, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if resume else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        raise _failed(path, e, "GNHUB_CACHE") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GnhubError(f"{path}: is not a regular file; remove it")
    return os.fdopen(fd, "wb")


def rename_new(src: Path, dst: Path, flag: str = "output") -> None:
    """Renames gnhub's finished file `src` (a download) to `dst`, where nothing may be yet."""
    try:
        _rename_noreplace(src, dst)
    except OSError as e:
        raise _failed(dst, e, flag) from None


# -- temporaries and the sweep -----------------------------------------------------------------

_held: dict[str, Folder] = {}  # this process's temporary directories -> their ledger, locked while alive


def _temp_file(folder: Path) -> tuple[int, Path]:
    """A new temporary file in `folder` (whose lock the caller holds), alive while `fd` is locked."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def _temp_dir(folder: Path) -> Path:
    """A new temporary directory in `folder` (whose lock the caller holds), alive while its ledger
    is locked."""
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    _held[str(path)] = Folder(path, hold=True)
    return path


def _release(path: Path) -> None:
    folder = _held.pop(str(path), None)
    if folder is not None:
        folder.close()


def _remove_temp(path: Path) -> None:
    """Removes one of gnhub's temporaries (a tree is removed without following links)."""
    if _is_real_dir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)
    _release(path)


def sweep(folder: Path) -> None:
    """Removes gnhub temporaries in `folder` whose process is gone: their lock is free (a kernel
    lock, released when its holder dies, whatever its pid or namespace). A link named like one is
    removed itself, never followed. Called with `folder`'s lock held."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    except OSError:
        return
    for name in names:
        path = folder / name
        if str(path) in _held:
            continue
        lock = path / LEDGER if _is_real_dir(path) else path  # a directory is alive while its ledger is locked
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:  # a directory killed before its ledger was made
            fd = None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link: removed itself
                _remove_temp(path)
            continue  # not ours to judge (another user's, unreadable)
        try:
            if fd is None or _lock_fd(fd, 0):
                _remove_temp(path)
        except OSError:
            pass  # no lock to be had: counted as alive
        finally:
            if fd is not None:
                os.close(fd)


def _move_aside(path: Path, still_ours: Callable[[Path], bool], flag: str = "output") -> None:
    """Removes gnhub's `path`: renamed into a temporary first and checked there (nothing can
    change it unseen any more); put back if it is not gnhub's after all."""
    with Folder(path.parent) as _:
        hold = _temp_dir(path.parent)
        try:
            aside = hold / "old"
            os.rename(path, aside)
            if not still_ours(aside):
                _rename_noreplace(aside, path)
                raise GnhubError(f"{path}: changed while gnhub was removing it; nothing was removed: choose another "
                                 f"{flag}")
        finally:
            _remove_temp(hold)


# -- directory outputs ------------------------------------------------------------------------

def check_replaceable(dest: Path, force: bool, what: str, owned: Callable[[Path], bool] | None = None) -> None:
    """Refuses, before any work, to replace `dest` unless `force` is given and `dest` is gnhub's:
    a real directory every file of which gnhub wrote (`owned`, where given, decides instead:
    folders gnhub owns by place, such as cache entries). Never a file, a link or the current
    directory."""
    if not os.path.lexists(dest):
        return
    if not force:
        raise GnhubError(f"{dest}: already exists; choose another output or pass --force")
    if not _is_real_dir(dest):
        raise GnhubError(f"{dest}: is not a directory; --force replaces only {what}: choose another output")
    here = Path.cwd().resolve()
    if dest.resolve() == here or dest.resolve() in here.parents:
        raise GnhubError(f"{dest}: is the current directory or holds it; choose another output")
    if not (owned(dest) if owned is not None else is_owned_tree(dest)):
        raise GnhubError(f"{dest}: is not {what} that gnhub wrote (it holds other files, or files changed since); "
                         f"--force replaces only {what}: choose another output")


@contextmanager
def new_dir(dest: str | Path, force: bool, what: str, owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yields a private temporary directory beside `dest` that becomes `dest` when the block ends
    well, with a ledger of every file in it.

    Entering checks that `dest` may be replaced (check_replaceable) and that its folder is
    writable, before any work. At the end the same check is made again under the folder's lock,
    and the new directory is swapped in: renamed where nothing is, exchanged atomically with a
    replaceable `dest` (whose old content, checked once more, is then removed). On any error or
    interrupt the temporary is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    check_replaceable(dest, force, what, owned)
    try:
        with Folder(dest.parent, "output"):  # made under the lock, so no sweep sees it before its lock
            tmp = _temp_dir(dest.parent)
    except OSError as e:
        raise GnhubError(f"{dest}: cannot write there ({e.strerror}); choose another output") from None
    mask = _umask()
    try:
        yield tmp
        _write_ledger_tree(tmp)
        for folder, dirs, files in os.walk(tmp):  # mkdtemp and safetensors make private files
            for name in dirs + files:
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), (0o777 if name in dirs else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        with Folder(dest.parent, "output"):
            _swap_in(tmp, dest, force, what, owned)
    except OSError as e:
        raise _failed(dest, e, "output") from None
    finally:
        _remove_temp(tmp)  # the temporary, or after a swap the old output


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temporary directory in gnhub's cache for files the block exchanges with another
    process, removed when the block ends, however it ends."""
    root = cache_dir()
    with Folder(root, "GNHUB_CACHE"):  # made under the lock, so no sweep sees it before its lock
        tmp = _temp_dir(root)
    try:
        yield tmp
    finally:
        _remove_temp(tmp)


def _write_ledger_tree(root: Path) -> None:
    """Records in `root`'s ledger, and in a ledger in each folder below it, every file there (a
    new tree; files written with Folder.write are recorded already)."""
    for folder, _dirs, files in os.walk(root):
        with Folder(folder) as held:
            for name in sorted(files):
                path = Path(folder) / name
                if name == LEDGER or name.startswith(TMP_PREFIX) or not _is_real_file(path):
                    continue
                if not _owned_file(path, held.known):
                    held.record(name, sha256_file(path))


def _swap_in(tmp: Path, dest: Path, force: bool, what: str, owned) -> None:
    """Under the folder's lock: `tmp` becomes `dest`; a replaceable `dest` ends up in `tmp`."""
    if not os.path.lexists(dest):
        _rename_noreplace(tmp, dest)
        return
    check_replaceable(dest, force, what, owned)  # again, now: it may have changed during the work
    replaceable = owned if owned is not None else is_owned_tree
    if _rename2(tmp, dest, _EXCHANGE):
        if not replaceable(tmp):  # once more, where nothing can change it unseen: else put it back
            _rename2(tmp, dest, _EXCHANGE)
            raise GnhubError(f"{dest}: changed while gnhub was replacing it; nothing was replaced: choose another "
                             "output")
        return
    # No RENAME_EXCHANGE on this file system: the old output is moved aside first (a moment
    # without `dest`), and put back only by this process, only if the rename fails.
    hold = _temp_dir(dest.parent)
    try:
        os.rename(dest, hold / "old")
        try:  # gnhub's by content: checked again where nothing changes it unseen (by place: checked above)
            if owned is None and not is_owned_tree(hold / "old"):
                raise GnhubError(f"{dest}: changed while gnhub was replacing it; nothing was replaced: choose "
                                 "another output")
            _rename_noreplace(tmp, dest)
        except BaseException:
            _rename_noreplace(hold / "old", dest)
            raise
    finally:
        _remove_temp(hold)


def remove_inside(path: Path, root: Path) -> bool:
    """Removes `path` (a tree, a file, or a link itself, never what it points to), which must lie
    inside gnhub's own folder `root` (the cache). Returns whether anything was removed."""
    if not os.path.lexists(path):
        return False
    if root.resolve() not in path.parent.resolve().parents and path.parent.resolve() != root.resolve():
        raise GnhubError(f"{path}: not inside gnhub's folder {root}; refused")
    if _is_real_dir(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True


def remove_if_empty(folder: Path) -> None:
    """Removes `folder` if it is an empty real directory (never a link); else leaves it."""
    with suppress(OSError):
        if _is_real_dir(folder):
            os.rmdir(folder)


def check_output_file(path: str | Path, flag: str = "the output") -> Path:
    """Refuses, before any work, a file output that cannot be written: its folder missing or not
    writable, a directory in its place, or a file there that gnhub did not write."""
    path = Path(path)
    if path.is_dir():
        raise GnhubError(f"{path}: is a directory; {flag} must be a file path")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise GnhubError(f"{path}: cannot write there ({e.strerror}); choose another {flag}") from None
    if os.path.lexists(path) and not _owned_file(path, _ledger(path.parent)):
        raise GnhubError(f"{path}: exists, and gnhub did not write it (or it changed since); choose another {flag}")
    return path

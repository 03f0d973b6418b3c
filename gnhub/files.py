"""The one owner of the files gnhub creates, replaces and removes (the contract: docs/files.md).

- Temporaries are `mkstemp`/`mkdtemp` names (`.gnhub-tmp.*`, private, `O_EXCL`), locked by the
  process that made them (`flock`) for as long as it lives; `sweep` removes only those whose lock
  is free, so no pid, host or namespace is ever guessed.
- gnhub claims a file only by content: every folder it writes into has a ledger
  (`.gnhub-files.jsonl`) of the sha256 of each file it wrote there, appended *before* the file is
  renamed into place. A file is gnhub's to replace or remove only while its content is one the
  ledger recorded for its name; a directory output only while every file in it is.
- Nothing is replaced without checking again, under the folder's lock, at the moment of the
  rename; rename never replaces (`RENAME_NOREPLACE`) and a directory output is swapped in
  (`RENAME_EXCHANGE`) so that no moment exists without it. Links are never followed.
No torch here.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import GnhubError

__all__ = [
    "LEDGER", "TMP_PREFIX", "Folder", "append_line", "check_output_file", "check_replaceable", "checked_sha256",
    "foreign", "is_owned_tree", "new_dir", "remove_inside", "sha256_file", "sweep", "write_file",
]

TMP_PREFIX = ".gnhub-tmp."  # temporaries: gnhub's own by name, removed once their process is gone
LEDGER = ".gnhub-files.jsonl"  # per folder: {"name", "sha256"} of every file gnhub wrote there
LOCK_WAIT = 60.0  # seconds a one-off write waits for another gnhub process holding the folder


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
    from .settings import cache_dir

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
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
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


def _open_dir(path: Path) -> int:
    """An fd of the real directory `path` (never through a link)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


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


# -- temporaries and the sweep -----------------------------------------------------------------

_held: dict[str, int] = {}  # this process's temporaries -> the fd whose lock says they are alive


def _temp_dir(folder: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    fd = _open_dir(path)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held[str(path)] = fd
    return path


def _temp_file(folder: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, Path(name)


def _release(path: Path) -> None:
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def _remove_temp(path: Path) -> None:
    """Removes one of gnhub's temporaries (a tree is removed without following links)."""
    if _is_real_dir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with _suppress():
            os.unlink(path)
    _release(path)


@contextmanager
def _suppress():
    try:
        yield
    except FileNotFoundError:
        pass


def sweep(folder: Path) -> None:
    """Removes gnhub temporaries in `folder` whose process is gone: their lock is free (a kernel
    lock, released when its holder dies, whatever its host, pid or namespace). A link named like
    one is removed itself, never followed."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    except OSError:
        return
    for name in names:
        path = folder / name
        if str(path) in _held:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:  # a planted link: remove the link
                with _suppress():
                    os.unlink(path)
            continue
        try:
            if not _lock_fd(fd, 0):
                continue  # its process is alive
            _remove_temp(path)
        finally:
            os.close(fd)


# -- the ledger: what gnhub wrote in a folder, by content ---------------------------------------

def _ledger(folder: Path) -> dict[str, set[str]]:
    """name -> the sha256 of every content gnhub wrote under that name in `folder` (complete lines
    only: a line cut by a kill is ignored). A ledger that is a link or not a file counts as none."""
    try:
        fd = os.open(folder / LEDGER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return {}
        data = f.read()
    known: dict[str, set[str]] = {}
    for line in data.split(b"\n")[:-1]:
        try:
            row = json.loads(line)
            known.setdefault(row["name"], set()).add(row["sha256"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return known


def _record(folder: Path, name: str, digest: str) -> None:
    """Appends one line to `folder`'s ledger (never through a link); the caller holds the lock."""
    fd = os.open(folder / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "the ledger is not a file", str(folder / LEDGER))
        size = os.fstat(fd).st_size
        if size:  # a line cut by a kill ends here, not inside the next record
            with open(folder / LEDGER, "rb", opener=lambda p, fl: os.open(p, fl | os.O_NOFOLLOW)) as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        os.write(fd, (json.dumps({"name": name, "sha256": digest}) + "\n").encode())
    finally:
        os.close(fd)


def _owned_file(path: Path, known: dict[str, set[str]]) -> bool:
    return _is_real_file(path) and path.name in known and sha256_file(path) in known[path.name]


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


def _write_ledger_tree(root: Path) -> None:
    """A ledger in `root` and each folder below it, of every file written there (a new tree)."""
    for folder, _dirs, files in os.walk(root):
        folder = Path(folder)
        for name in sorted(files):
            if name != LEDGER:
                _record(folder, name, sha256_file(folder / name))


# -- folders gnhub writes files into ------------------------------------------------------------

_locked: dict[tuple[int, int], list] = {}  # folders this process holds: (device, inode) -> [opens, ledger]


class Folder:
    """A folder gnhub writes files into, locked against other gnhub writers (`flock` on the folder
    itself) while open. `hold=True` holds it for a whole run (a second run is one error); else
    each write waits up to LOCK_WAIT s. A folder this process already holds is not locked again."""

    def __init__(self, path: str | Path, flag: str = "output", hold: bool = False):
        self.path, self.flag = Path(path), flag
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._fd = _open_dir(self.path)
        except OSError as e:
            raise GnhubError(f"{self.path}: cannot write there ({e.strerror}); choose another {flag}") from None
        st = os.fstat(self._fd)
        self._key = (st.st_dev, st.st_ino)
        if self._key in _locked:  # held by this process already: its ledger is the one in memory
            _locked[self._key][0] += 1
        elif _lock_fd(self._fd, 0 if hold else LOCK_WAIT):
            sweep(self.path)
            _locked[self._key] = [1, _ledger(self.path)]
        else:
            os.close(self._fd)
            raise GnhubError(f"{self.path}: another gnhub process is writing there; wait for it or choose another "
                             f"{flag}")
        self.known = _locked[self._key][1]

    def close(self) -> None:
        if self._fd is not None:
            _locked[self._key][0] -= 1
            if not _locked[self._key][0]:
                del _locked[self._key]
            os.close(self._fd)  # the lock goes with the last fd of this process that holds it
            self._fd = None

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

    def write(self, name: str, data: bytes | Callable[[BinaryIO], object], replace_any: bool = False) -> Path:
        """Writes `name` atomically: into a private temporary, recorded in the ledger, then renamed
        into place, where nothing is (never replacing) or over a file whose content gnhub wrote
        (checked again now). `replace_any`: any regular file there is gnhub's (its own folders)."""
        path = self.path / name
        fd, tmp = _temp_file(self.path)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                data(f) if callable(data) else f.write(data)
            os.fchmod(fd, 0o666 & ~_umask())
            digest = sha256_file(tmp)
            exists = os.path.lexists(path)
            if exists and not (_is_real_file(path) if replace_any else _owned_file(path, self.known)):
                raise GnhubError(f"{path}: exists and is not a file gnhub wrote (or it changed since); nothing was "
                                 f"replaced: move it away or choose another {self.flag}")
            if not replace_any:
                _record(self.path, name, digest)
                self.known.setdefault(name, set()).add(digest)
            os.rename(tmp, path) if exists else _rename_noreplace(tmp, path)
        except OSError as e:
            raise GnhubError(f"{path}: writing failed ({e.strerror}); nothing was replaced: free some space or "
                             f"choose another {self.flag}") from None
        finally:
            os.close(fd)
            with _suppress():
                if _is_real_file(tmp):
                    os.unlink(tmp)
        return path

    def remove(self, name: str, also: Callable[[Path], bool] | None = None) -> None:
        """Removes `name` if it is a file whose content gnhub wrote, or a folder all of whose files
        are (or that `also` says gnhub owns as a whole)."""
        path = self.path / name
        if _is_real_dir(path) and (is_owned_tree(path) or (also is not None and also(path))):
            shutil.rmtree(path)
        elif os.path.lexists(path) and _owned_file(path, self.known):
            os.unlink(path)
        elif os.path.lexists(path):
            raise GnhubError(f"{path}: is not gnhub's (or changed since gnhub wrote it); nothing was removed")


def foreign(folder: Path, also: Callable[[Path], bool] | None = None) -> list[str]:
    """The names in `folder` that are not gnhub's: files whose content its ledger does not record,
    folders not wholly gnhub's (nor owned as a whole by `also`); its ledger and temporaries aside."""
    known = _ledger(folder)
    out = []
    for name in os.listdir(folder):
        path = folder / name
        if name == LEDGER or name.startswith(TMP_PREFIX):
            continue
        if _is_real_dir(path):
            if not (is_owned_tree(path) or (also is not None and also(path))):
                out.append(name)
        elif not _owned_file(path, known):
            out.append(name)
    return out


def write_file(path: str | Path, data: bytes | Callable[[BinaryIO], object], flag: str = "output",
               replace_any: bool = False) -> Path:
    """One file, atomically, into its folder (see Folder.write): a new file, or one gnhub wrote."""
    path = Path(path)
    with Folder(path.parent, flag) as folder:
        return folder.write(path.name, data, replace_any)


def append_line(path: Path, text: str) -> None:
    """Appends to a regular file, never through a link (gnhub's append-only logs)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        raise GnhubError(f"{path}: cannot append there ({e.strerror}; a link or not a file?)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GnhubError(f"{path}: is not a regular file; gnhub appends only to its own logs")
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


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
    replaceable `dest` (whose old content is then removed). On any error or interrupt the
    temporary is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    check_replaceable(dest, force, what, owned)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep(dest.parent)
        tmp = _temp_dir(dest.parent)
    except OSError as e:
        raise GnhubError(f"{dest}: cannot write there ({e.strerror}); choose another output") from None
    mask = _umask()
    try:
        yield tmp
        _write_ledger_tree(tmp)
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the result is an ordinary directory
        with Folder(dest.parent, "output"):
            _swap_in(tmp, dest, force, what, owned)
    except OSError as e:
        raise GnhubError(f"{dest}: writing failed ({e.strerror}); nothing was replaced: free some space "
                         "or choose another output") from None
    finally:
        _remove_temp(tmp)  # the temporary, or after a swap the old output


def _swap_in(tmp: Path, dest: Path, force: bool, what: str, owned) -> None:
    """Under the folder's lock: `tmp` becomes `dest`; a replaceable `dest` ends up in `tmp`."""
    if not os.path.lexists(dest):
        _rename_noreplace(tmp, dest)
        return
    check_replaceable(dest, force, what, owned)  # again, now: it may have changed during the work
    if _rename2(tmp, dest, _EXCHANGE):
        return
    # No RENAME_EXCHANGE on this file system: the old output is moved into a second temporary
    # first (a moment without `dest`), and put back only by this process, only if the rename fails.
    hold = _temp_dir(dest.parent)
    try:
        os.rename(dest, hold / "old")
        try:
            _rename_noreplace(tmp, dest)
        except OSError:
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
        raise GnhubError(f"{path}: exists and gnhub did not write it (or it changed since); choose another {flag}")
    return path

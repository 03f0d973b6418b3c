"""The model directory on disk: its files, checking one (config and the weights' sha256), and
writing directories and files atomically, never replacing what is not gnhub's. No torch here."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .config import ModelConfig
from .errors import GnhubError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VERIFICATION_FILE = "verification.json"
GOLDEN_FILE = "golden.safetensors"
CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"

def sha256_file(path: str | Path) -> str:
    """In 16 MiB chunks: hashing releases the GIL, so few chunks let it run beside other work."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """gnhub's cache: GNHUB_CACHE, else $XDG_CACHE_HOME/gnhub, else ~/.cache/gnhub."""
    base = os.environ.get("GNHUB_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gnhub"


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


def check_model_dir(path: str | Path, check_hash: bool = True, full_hash: bool = False) -> ModelConfig:
    """The config of a gnhub model directory, with model.safetensors checked against its sha256
    (`full_hash`: read in full, whatever the hash store remembers)."""
    path = Path(path)
    if not path.is_dir():
        raise GnhubError(f"{path}: not a gnhub model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise GnhubError(f"{path}: {name} is missing; convert the model again")
    config = ModelConfig.load(path / CONFIG_FILE)
    weights = path / WEIGHTS_FILE
    if check_hash and not re.fullmatch(r"[0-9a-f]{64}", config.weights_sha256):
        raise GnhubError(f"{path / CONFIG_FILE}: weights_sha256 is {config.weights_sha256!r}, not a sha256; "
                         "the weights cannot be checked: convert or download the model again")
    if check_hash and checked_sha256(weights, trust_store=not full_hash) != config.weights_sha256:
        raise GnhubError(
            f"{weights}: sha256 does not match config.json's weights_sha256; the file is corrupt "
            "or was changed: download or convert it again"
        )
    return config


def tensor_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a model directory's weights, read off the safetensors
    header alone."""
    from safetensors import SafetensorError, safe_open

    path = model_dir / WEIGHTS_FILE
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as e:
        raise GnhubError(f"{path}: not a readable safetensors file ({str(e).strip()[:100]})") from None


# What gnhub writes into a model directory; `--force` replaces nothing else.
MODEL_DIR_FILES = {CONFIG_FILE, WEIGHTS_FILE, VERIFICATION_FILE, GOLDEN_FILE, CARD_FILE}


def is_model_dir(path: Path) -> bool:
    """A directory gnhub wrote: a gnhub config.json and only the files gnhub writes."""
    return _written_by_gnhub(path, MODEL_DIR_FILES)


EXPORT_DIR_FILES = {CONFIG_FILE, ONNX_FILE, VERIFICATION_FILE, GOLDEN_FILE}


def is_export_dir(path: Path) -> bool:
    """A directory `gnhub export` wrote: a gnhub config.json, model.onnx and only export files."""
    return _written_by_gnhub(path, EXPORT_DIR_FILES) and (path / ONNX_FILE).is_file()


def is_published_dir(path: Path) -> bool:
    """A model in a directory hub: a model directory, its ONNX export (if any) in onnx/."""
    return _written_by_gnhub(path, MODEL_DIR_FILES | {EXPORT_SUBDIR})


EXPORT_SUBDIR = "onnx"  # where a published repository keeps the model's ONNX export


def _written_by_gnhub(path: Path, files: set[str]) -> bool:
    try:
        names = {p.name for p in path.iterdir()}
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    ours = {n for n in files if (path / n).is_file()}
    if EXPORT_SUBDIR in files and is_export_dir(path / EXPORT_SUBDIR):
        ours.add(EXPORT_SUBDIR)
    return isinstance(data, dict) and "format_version" in data and "weights_sha256" in data and names <= ours


def check_replaceable(dest: Path, force: bool, what: str = "a gnhub model directory",
                      owned=is_model_dir) -> None:
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


@contextmanager
def atomic_dir(dest: str | Path, force: bool = False, what: str = "a gnhub model directory", owned=is_model_dir):
    """Yields a fresh temporary directory beside `dest` that becomes `dest` on success.

    Entering it checks that `dest` may be replaced (see `check_replaceable`) and that its folder
    is writable, before any work is done. On any error (or interrupt) the temporary directory is
    removed and an existing `dest` is left as it was. Files get the umask's ordinary modes.
    """
    dest = Path(dest)
    check_replaceable(dest, force, what, owned)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
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
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
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
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GnhubError(f"{path}: writing failed ({e.strerror}); free some space or choose another {flag}") from None

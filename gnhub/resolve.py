"""What a name means, torch-free: a model directory as it is; `hf-hub:ORG/NAME[@rev]` from the
hub; a zoo name from gnhub's cache, else its hub repository ORG/NAME, else its upstream file
(downloaded, converted, verified and cached); ORG/NAME in a directory hub. The policy lives here;
hub.py moves files, cache.py fills the cache."""
from __future__ import annotations

from pathlib import Path

from . import cache, zoo
from .errors import GnhubError
from .hub import EXPORT_EXTRA_FILES, EXPORT_FILES, NotPublished, check_repo_id, fetch_repo, is_repo_id
from .layout import CONFIG_FILE
from .settings import HubSettings

__all__ = ["fetch", "resolve", "resolve_export", "unknown"]


def resolve(name: str | Path, settings: HubSettings | None = None) -> Path:
    """A local model directory for a directory, `hf-hub:owner/repo[@rev]`, a zoo name, or
    ORG/NAME in a directory hub."""
    s = (settings or HubSettings()).resolved()
    text = str(name)
    if not text.strip():
        raise GnhubError("no model given: pass a model directory, a zoo name (`gnhub list`) or hf-hub:ORG/NAME")
    if Path(text).is_dir():
        return Path(text)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:"):].partition("@")
        return fetch_repo(check_repo_id(repo), revision or None, s)
    entry = zoo.get(text)
    if entry is not None:
        return _resolve_zoo(entry, s)
    if s.hub_dir and is_repo_id(text) and (Path(s.hub_dir) / text / CONFIG_FILE).is_file():  # in a directory hub
        return Path(s.hub_dir) / text
    raise GnhubError(f"{text}: {unknown(text)}")


def unknown(text: str, what: str = "model directory or zoo model", as_path: str = "model directory") -> str:
    """What to say of a name that is none of `what`: a path is no such `as_path`; anything else
    gets the closest zoo names."""
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return f"no such {as_path}"
    close = zoo.suggest(text)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `gnhub list` shows the zoo"
    return f"no such {what}{hint}"


def resolve_export(name: str | Path, settings: HubSettings | None = None) -> Path:
    """The ONNX export of a model: a directory as it is, else the onnx/ folder of its published
    repository (`hf-hub:ORG/NAME[@rev]`, a zoo name, or ORG/NAME in a directory hub)."""
    s = (settings or HubSettings()).resolved()
    text, revision = str(name), None
    if Path(text).is_dir():
        return Path(text)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:"):].partition("@")
    elif zoo.get(text) is not None:
        repo = zoo.get(text).hub_repo(s.org)
    elif is_repo_id(text):
        repo = text
    else:
        raise GnhubError(f"{text}: no such export directory or published model (pass a `gnhub export` directory, "
                         "a zoo name or hf-hub:ORG/NAME)")
    try:
        return fetch_repo(check_repo_id(repo), revision or None, s, EXPORT_FILES, EXPORT_EXTRA_FILES)
    except NotPublished as e:
        raise GnhubError(f"{e}; or it was published without an ONNX export (gnhub publish --onnx)") from None


def _resolve_zoo(entry: zoo.ZooEntry, s: HubSettings) -> Path:
    """A zoo name: the local cache (no network), else the hub repository ORG/NAME, else the
    entry's upstream file, downloaded, converted, verified and cached."""
    # huggingface_hub (slow to import) only for a zoo name
    from huggingface_hub import constants

    path = cache.cached(entry)
    if path is not None:
        return path
    try:
        return fetch_repo(check_repo_id(entry.hub_repo(s.org)), None, s)
    except NotPublished:
        problem = None
    except GnhubError as e:
        problem = e
    if constants.HF_HUB_OFFLINE:
        raise GnhubError(f"{entry.name}: not in the local cache (gnhub's in {cache.cache_dir()}, or the hub's) "
                         "and HF_HUB_OFFLINE is set; fetch it first with `gnhub fetch` while online, or convert "
                         "its file with `gnhub convert FILE -o DIR` and pass DIR as the model")
    try:
        return cache.fetch(entry, s.quiet, keep_source=s.keep_source, mirror=s.source_mirror)
    except GnhubError as e:
        if problem is None:
            raise
        raise GnhubError(f"{problem}; and its upstream file: {e}") from None


def fetch(names: list[str], settings: HubSettings | None = None) -> list[tuple[str, Path]]:
    """`gnhub fetch`: each zoo name resolved (cache, hub, or upstream file converted and cached),
    every name checked first; (name, model directory) each."""
    for n in names:
        if zoo.get(n) is None:
            close = zoo.suggest(n)
            raise GnhubError(f"{n}: not a zoo model" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return [(n, resolve(n, settings)) for n in names]

"""Model hubs: name -> model directory (Hugging Face Hub or a plain directory hub), and publishing.

Configuration, argument first, then environment:
    endpoint  GNHUB_ENDPOINT (else HF_ENDPOINT, else huggingface.co)
    org       GNHUB_ORG (default "gnhub"): where zoo names live, as ORG/NAME
    hub_dir   GNHUB_HUB_DIR: a directory laid out as ORG/NAME/ used instead of a server
Tokens come from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) and are never printed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import zoo
from .errors import GnhubError
from .layout import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_SUBDIR,
    GOLDEN_FILE,
    ONNX_FILE,
    VERIFICATION_FILE,
    WEIGHTS_FILE,
    atomic_dir,
    check_model_dir,
    is_export_dir,
    is_published_dir,
    sha256_file,
)
from .report import read_report

MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)
EXTRA_FILES = (VERIFICATION_FILE, GOLDEN_FILE, CARD_FILE)
EXPORT_FILES = tuple(f"{EXPORT_SUBDIR}/{f}" for f in (ONNX_FILE, CONFIG_FILE, VERIFICATION_FILE))
EXPORT_EXTRA_FILES = (f"{EXPORT_SUBDIR}/{GOLDEN_FILE}",)


@dataclass
class HubSettings:
    endpoint: str | None = None
    org: str | None = None
    hub_dir: str | None = None
    token: str | None = None
    source_mirror: str | None = None  # GNHUB_SOURCE_MIRROR: replaces the host of upstream source URLs
    quiet: bool | None = None  # no progress bars (GNHUB_QUIET; default: quiet when stderr is not a TTY)
    keep_source: bool = False  # keep an upstream file downloaded for conversion in the cache

    def resolved(self) -> HubSettings:
        return HubSettings(
            self.endpoint or os.environ.get("GNHUB_ENDPOINT") or None,
            self.org or os.environ.get("GNHUB_ORG") or zoo.DEFAULT_ORG,
            self.hub_dir or os.environ.get("GNHUB_HUB_DIR") or None,
            self.token,
            self.source_mirror or os.environ.get("GNHUB_SOURCE_MIRROR") or None,
            self.quiet,
            self.keep_source,
        )


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
        return _fetch(check_repo_id(repo), revision or None, s)
    entry = zoo.get(text)
    if entry is not None:
        return _resolve_zoo(entry, s)
    if s.hub_dir and _is_repo_id(text) and (Path(s.hub_dir) / text / CONFIG_FILE).is_file():  # in a directory hub
        return Path(s.hub_dir) / text
    close = zoo.suggest(text)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `gnhub list` shows the zoo"
    raise GnhubError(f"{text}: no such model directory or zoo model{hint}")


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
    elif _is_repo_id(text):
        repo = text
    else:
        raise GnhubError(f"{text}: no such export directory or published model (pass a `gnhub export` directory, "
                         "a zoo name or hf-hub:ORG/NAME)")
    try:
        return _fetch(check_repo_id(repo), revision or None, s, EXPORT_FILES, EXPORT_EXTRA_FILES)
    except NotPublished as e:
        raise GnhubError(f"{e}; or it was published without an ONNX export (gnhub publish --onnx)") from None


class NotPublished(GnhubError):
    """The hub has no such repository."""


def _resolve_zoo(entry: zoo.ZooEntry, s: HubSettings) -> Path:
    """A zoo name: the local cache (no network), else the hub repository ORG/NAME, else the
    entry's upstream file, downloaded, converted, verified and cached."""
    from huggingface_hub import constants

    from . import cache

    path = cache.cached(entry)
    if path is not None:
        return path
    try:
        return _fetch(check_repo_id(entry.hub_repo(s.org)), None, s)
    except NotPublished:
        problem = None
    except GnhubError as e:
        problem = e
    if constants.HF_HUB_OFFLINE:
        raise GnhubError(f"{entry.name}: not in the local cache (gnhub's in {cache.cache_dir()}, or the hub's) "
                         "and HF_HUB_OFFLINE is set; fetch it first with `gnhub fetch` while online")
    try:
        return cache.fetch(entry, s.quiet, keep_source=s.keep_source, mirror=s.source_mirror)
    except GnhubError as e:
        if problem is None:
            raise
        raise GnhubError(f"{problem}; and its upstream file: {e}") from None


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is ORG/NAME by the Hugging Face Hub's rules (huggingface_hub's own
    validation), else one clear error: nothing outside a hub is ever named by one."""
    if not _is_repo_id(repo_id):
        raise GnhubError(f"{repo_id!r}: not a hub repository id; expected ORG/NAME (letters, digits, '-', '_', "
                         "'.'; no '--' or '..'; at most 96 characters each)")
    return repo_id


def _is_repo_id(repo_id: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return repo_id.count("/") == 1


def _fetch(repo_id: str, revision: str | None, s: HubSettings, required=MODEL_FILES, optional=EXTRA_FILES) -> Path:
    """The folder holding `required` (and what exists of `optional`) of a hub repository."""
    if s.hub_dir:
        path = Path(s.hub_dir) / repo_id / required[0]
        if not path.is_file():
            raise NotPublished(f"{repo_id}: not in the directory hub {s.hub_dir} (expected {path})")
        return path.parent
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id} on {s.endpoint or 'the Hugging Face Hub'}"
    hf_logger = logging.getLogger("huggingface_hub")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # its per-retry warnings; gnhub says once what failed
    try:
        cached_only = not _reachable(repo_id, revision, s)  # one try, not huggingface_hub's retries
        get = lambda f: hf_hub_download(repo_id, f, revision=revision, endpoint=s.endpoint, token=s.token,
                                        local_files_only=cached_only)
        try:
            paths = [get(f) for f in required]
        except LocalEntryNotFoundError:
            if not cached_only:
                raise
            raise GnhubError(f"{where}: the hub cannot be reached and the model is not in the local cache; "
                             "check the network or the endpoint (work offline, once cached, with "
                             "HF_HUB_OFFLINE=1)") from None
        for f in optional:
            try:
                get(f)
            except EntryNotFoundError:  # optional files: absent remotely, or not cached when offline
                pass
    except RepositoryNotFoundError:  # the Hub answers 401 for a repository that does not exist, too
        raise NotPublished(f"{where}: repository not found, or private and no valid token "
                           "(set HF_TOKEN or run `hf auth login`)") from None
    except GatedRepoError:
        raise GnhubError(f"{where}: repository not found, or private and no valid token "
                         "(set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise GnhubError(f"{where}: revision {revision!r} not found") from None
    except LocalEntryNotFoundError:
        raise GnhubError(f"{where}: not in the local cache and the hub cannot be reached "
                         "(offline: HF_HUB_OFFLINE is set or there is no network)") from None
    except RemoteEntryNotFoundError as e:
        raise GnhubError(f"{where}: not a gnhub model repository ({_first(e)})") from None
    except HfHubHTTPError as e:
        raise GnhubError(f"{where}: download failed ({_first(e)})") from None
    except (OSError, *httpx_errors()) as e:
        raise GnhubError(f"{where}: the hub cannot be reached ({_first(e)}); check the network or the endpoint, "
                         "or work offline from the cache with HF_HUB_OFFLINE=1") from None
    finally:
        hf_logger.setLevel(level)
    return Path(paths[0]).parent


def _reachable(repo_id: str, revision: str | None, s: HubSettings) -> bool:
    """Whether the hub answers at all (one HEAD request, no retries): False only for a transport
    error, so that a model in the cache still loads and an absent one fails at once."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return True  # huggingface_hub serves the cache itself
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_FILE, revision=revision, endpoint=s.endpoint),
                             token=s.token, timeout=10)
    except httpx_errors():
        return False
    except RepositoryNotFoundError:
        raise  # the answer is in: no need to ask again
    except Exception:  # noqa: BLE001 - any other answer: hf_hub_download asks again and reports it
        return True
    return True


def httpx_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of huggingface_hub's HTTP client (httpx, or its httpx2 fork)."""
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return (module.TransportError,)
    return ()


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- publishing -------------------------------------------------------------------------------

def publishable(model_dir: Path, allow_unverified: bool) -> dict:
    """Checks a model directory before publishing; returns its verification report (or {})."""
    config = check_model_dir(model_dir)  # config valid, weights match their sha256
    report = read_report(model_dir, config.task) or {}
    if not allow_unverified and "finetune" not in config.provenance:  # a fine-tuned model has no source
        if not report:
            raise GnhubError(f"{model_dir}: no {VERIFICATION_FILE}; run `gnhub convert` with verification, "
                             "or pass --allow-unverified")
        if not report.get("passed"):
            raise GnhubError(f"{model_dir}: verification failed; fix the conversion or pass --allow-unverified")
    return report


def publishable_export(export_dir: Path, model_dir: Path, allow_unverified: bool) -> dict:
    """Checks an ONNX export before it is published beside `model_dir`; returns its report."""
    if not is_export_dir(export_dir):
        raise GnhubError(f"{export_dir}: not a `gnhub export` directory (config.json, model.onnx, verification.json)")
    try:
        report = json.loads((export_dir / VERIFICATION_FILE).read_text(encoding="utf-8"))
        same = json.loads((export_dir / CONFIG_FILE).read_text(encoding="utf-8"))["weights_sha256"] == \
            check_model_dir(model_dir, check_hash=False).weights_sha256
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise GnhubError(f"{export_dir}: its config.json or verification.json is unreadable; export again") from None
    if not same:
        raise GnhubError(f"{export_dir}: was exported from other weights than {model_dir}'s; export {model_dir}")
    if not (report.get("passed") or allow_unverified):
        raise GnhubError(f"{export_dir}: the export was not verified; export again without --no-verify, or pass "
                         "--allow-unverified")
    return report


def publish(model_dir: Path, repo_id: str, card: str, settings: HubSettings | None = None, private: bool = False,
            revision: str | None = None, create_pr: bool = False, message: str | None = None,
            export_dir: Path | None = None) -> dict:
    """Uploads the model files, its ONNX export (in onnx/, if given) and the card in one commit;
    no commit if nothing changed."""
    check_repo_id(repo_id)
    s = (settings or HubSettings()).resolved()
    files = {f: model_dir / f for f in (*MODEL_FILES, VERIFICATION_FILE, GOLDEN_FILE) if (model_dir / f).is_file()}
    if export_dir is not None:
        files.update({f"{EXPORT_SUBDIR}/{p.name}": p for p in sorted(export_dir.iterdir()) if p.is_file()})
    if s.hub_dir:
        return _publish_to_dir(Path(s.hub_dir) / repo_id, files, card)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=s.endpoint, token=s.token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        before = api.repo_info(repo_id, revision=revision).sha
        ops = [CommitOperationAdd(name, str(path)) for name, path in files.items()]
        ops.append(CommitOperationAdd(CARD_FILE, card.encode("utf-8")))
        info = api.create_commit(repo_id, ops, commit_message=message or f"gnhub: publish {model_dir.name}",
                                 revision=revision, create_pr=create_pr)
    except HfHubHTTPError as e:
        raise GnhubError(f"{repo_id}: publishing failed ({_first(e)})") from None
    return {"repo_id": repo_id, "commit": info.oid, "changed": info.oid != before,
            "url": info.pr_url or info.commit_url}


def _publish_to_dir(dest: Path, files: dict[str, Path], card: str) -> dict:
    """A directory hub: the same files, replaced atomically; unchanged content is left alone."""
    same = dest.is_dir() and (dest / CARD_FILE).is_file() and (dest / CARD_FILE).read_text() == card and all(
        (dest / n).is_file() and sha256_file(dest / n) == sha256_file(p) for n, p in files.items())
    if not same:
        with atomic_dir(dest, force=True, what="a model published to the directory hub", owned=is_published_dir) as tmp:
            for name, path in files.items():
                (tmp / name).parent.mkdir(exist_ok=True)
                shutil.copyfile(path, tmp / name)
            (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    return {"repo_id": str(dest), "commit": None, "changed": not same, "url": str(dest)}

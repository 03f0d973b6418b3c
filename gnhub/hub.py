"""Hubs as file stores: a repository's files from the Hugging Face Hub (through huggingface_hub,
its errors said in one line) or from a directory hub, and publishing a model to either. Which
source a name resolves to is gnhub/resolve.py's choice; settings are gnhub/settings.py's."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import GnhubError
from .files import new_dir, sha256_file
from .layout import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_SUBDIR,
    GOLDEN_FILE,
    ONNX_FILE,
    VERIFICATION_FILE,
    WEIGHTS_FILE,
)
from .settings import HubSettings

__all__ = ["EXPORT_EXTRA_FILES", "EXPORT_FILES", "EXTRA_FILES", "MODEL_FILES", "NotPublished", "check_repo_id",
    "fetch_repo", "httpx_errors", "is_repo_id", "upload"]

MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)
EXTRA_FILES = (VERIFICATION_FILE, GOLDEN_FILE, CARD_FILE)
EXPORT_FILES = tuple(f"{EXPORT_SUBDIR}/{f}" for f in (ONNX_FILE, CONFIG_FILE, VERIFICATION_FILE))
EXPORT_EXTRA_FILES = (f"{EXPORT_SUBDIR}/{GOLDEN_FILE}",)


class NotPublished(GnhubError):
    """The hub has no such repository."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is ORG/NAME by the Hugging Face Hub's rules (huggingface_hub's own
    validation), else one clear error: nothing outside a hub is ever named by one."""
    if not is_repo_id(repo_id):
        raise GnhubError(f"{repo_id!r}: not a hub repository id; expected ORG/NAME (letters, digits, '-', '_', "
                         "'.'; no '--' or '..'; at most 96 characters each)")
    return repo_id


def is_repo_id(repo_id: str) -> bool:
    # huggingface_hub (slow to import) only where a hub is used
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return repo_id.count("/") == 1


def fetch_repo(repo_id: str, revision: str | None, s: HubSettings, required=MODEL_FILES, optional=EXTRA_FILES) -> Path:
    """The folder holding `required` (and what exists of `optional`) of a hub repository."""
    if s.hub_dir:
        path = Path(s.hub_dir) / repo_id / required[0]
        if not path.is_file():
            raise NotPublished(f"{repo_id}: not in the directory hub {s.hub_dir} (expected {path})")
        return path.parent
    # huggingface_hub (slow to import) only where a hub is used
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
    # huggingface_hub (slow to import) only where a hub is used
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return True  # huggingface_hub serves the cache itself
    # huggingface_hub (slow to import) only where a hub is used
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


# -- uploading -------------------------------------------------------------------------------

def upload(files: dict[str, Path], card: str, repo_id: str, settings: HubSettings | None = None,
           private: bool = False, revision: str | None = None, create_pr: bool = False,
           message: str | None = None) -> dict:
    """`files` (repository name -> local path) and the card as README.md in one commit to ORG/NAME
    (or its folder in a directory hub); no commit if nothing changed."""
    check_repo_id(repo_id)
    s = (settings or HubSettings()).resolved()
    if s.hub_dir:
        return _upload_to_dir(Path(s.hub_dir) / repo_id, files, card)
    # huggingface_hub (slow to import) only where a hub is used
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
        info = api.create_commit(repo_id, ops, commit_message=message or f"gnhub: publish {repo_id}",
                                 revision=revision, create_pr=create_pr)
    except HfHubHTTPError as e:
        raise GnhubError(f"{repo_id}: publishing failed ({_first(e)})") from None
    return {"repo_id": repo_id, "commit": info.oid, "changed": info.oid != before,
            "url": info.pr_url or info.commit_url}


def _upload_to_dir(dest: Path, files: dict[str, Path], card: str) -> dict:
    """A directory hub: the same files, replaced atomically; unchanged content is left alone."""
    same = dest.is_dir() and (dest / CARD_FILE).is_file() and (dest / CARD_FILE).read_text() == card and all(
        (dest / n).is_file() and sha256_file(dest / n) == sha256_file(p) for n, p in files.items())
    if not same:
        with new_dir(dest, True, "a model published to the directory hub") as tmp:
            for name, path in files.items():
                (tmp / name).parent.mkdir(exist_ok=True)
                shutil.copyfile(path, tmp / name)
            (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    return {"repo_id": str(dest), "commit": None, "changed": not same, "url": str(dest)}

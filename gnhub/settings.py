"""Every GNHUB_* environment variable, read here and nowhere else; arguments override them.
An empty variable means unset; a value that is not one of those listed is an error naming it.

    GNHUB_CACHE             gnhub's cache (default $XDG_CACHE_HOME/gnhub, else ~/.cache/gnhub)
    GNHUB_ZOO_FILE          a JSON file of your own zoo entries
    GNHUB_HUB_DIR           a directory hub (ORG/NAME/) used instead of a server
    GNHUB_ENDPOINT          the hub's endpoint (else HF_ENDPOINT, else huggingface.co)
    GNHUB_ORG               where zoo names live on the hub, as ORG/NAME (default gnhub)
    GNHUB_SOURCE_MIRROR     http(s)://HOST[:PORT][/PATH] replacing the zoo's upstream download hosts
    GNHUB_QUIET             1/true/yes/on: no progress bars; 0/false/no/off: bars (default: quiet when
                            stderr is not a terminal)
    GNHUB_MAX_IMAGE_PIXELS  larger images are refused before they are decoded (default 50 million)
    GNHUB_MAX_DOWNLOAD_BYTES        an upstream download larger than this is refused (default 4 GiB)
    GNHUB_DOWNLOAD_STALL_SECONDS    a download receiving under 64 KiB in this long is stalled (default 30)
    GNHUB_DOWNLOAD_TOTAL_SECONDS    a download not done in this long stops, resumable (default 3600)
    GNHUB_PADDLE_PYTHON     the python of a PaddlePaddle environment, for `verify --against paddle`
    GNHUB_PADDLE_DETECTION  PaddleDetection's source folder (ppdet/, configs/), for the same
    GNHUB_MALLOC            "system" leaves glibc's malloc as it is where gnhub.tune_cpu() (the
                            gnhub command) would tune it (see gnhub/allocator.py)

Paths may start with ~ (expanded); a relative path is taken from the working directory and
made absolute when read.
"""
from __future__ import annotations

import math
import os
import sys
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import GnhubError

__all__ = ["DEFAULT_ORG", "HubSettings", "MAX_IMAGE_PIXELS", "cache_dir", "max_image_pixels", "paddle_detection",
    "paddle_python", "system_malloc", "zoo_file"]

DEFAULT_ORG = "gnhub"
MAX_IMAGE_PIXELS = 50_000_000  # masks are kept at full resolution
MAX_DOWNLOAD_BYTES = 4 << 30
DOWNLOAD_STALL_SECONDS = 30.0
DOWNLOAD_TOTAL_SECONDS = 3600.0
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _path(name: str) -> Path | None:
    """A path variable: ~ expanded, made absolute against the working directory."""
    value = _env(name)
    if value is None:
        return None
    path = Path(os.path.expanduser(value))
    if str(path).startswith("~"):
        raise GnhubError(f"{name}={value!r}: no such user's home folder; give the folder's full path")
    return path.absolute()


def _flag(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    if value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise GnhubError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def _positive(name: str, default: float, kind: type = int, unit: str = "a whole number"):
    value = _env(name)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise GnhubError(f"{name}={value!r}: must be {unit} above 0 (unset: {default:.10g})")
    return number


def cache_dir() -> Path:
    """gnhub's cache: GNHUB_CACHE, else $XDG_CACHE_HOME/gnhub, else ~/.cache/gnhub (a relative
    XDG_CACHE_HOME is ignored, as the XDG specification says)."""
    base = _path("GNHUB_CACHE")
    if base:
        return base
    xdg = _env("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "gnhub"


def paddle_python() -> Path | None:
    return _path("GNHUB_PADDLE_PYTHON")


def paddle_detection() -> Path | None:
    return _path("GNHUB_PADDLE_DETECTION")


def zoo_file() -> str | None:
    path = _path("GNHUB_ZOO_FILE")
    return str(path) if path else None


def max_image_pixels() -> int:
    return _positive("GNHUB_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS, unit="a whole number of pixels")


def max_download_bytes() -> int:
    return _positive("GNHUB_MAX_DOWNLOAD_BYTES", MAX_DOWNLOAD_BYTES, unit="a whole number of bytes")


def download_stall_seconds() -> float:
    return _positive("GNHUB_DOWNLOAD_STALL_SECONDS", DOWNLOAD_STALL_SECONDS, float, "a number of seconds")


def download_total_seconds() -> float:
    return _positive("GNHUB_DOWNLOAD_TOTAL_SECONDS", DOWNLOAD_TOTAL_SECONDS, float, "a number of seconds")


def system_malloc() -> bool:
    value = _env("GNHUB_MALLOC")
    if value not in (None, "gnhub", "system"):
        raise GnhubError(f"GNHUB_MALLOC={value!r}: expected \"system\" or \"gnhub\" (the default)")
    return value == "system"


def check_mirror(mirror: str | None) -> str | None:
    """A source mirror as http(s)://HOST[:PORT][/PATH], else one error naming the setting."""
    if not mirror:
        return None
    try:
        parts = urllib.parse.urlsplit(mirror)
        ok = (parts.scheme in ("http", "https") and parts.hostname and not parts.username
              and not parts.query and not parts.fragment and parts.port != 0)
    except ValueError:  # a port that is not a number 0-65535
        ok = False
    if not ok:
        raise GnhubError(f"source mirror {mirror!r} (GNHUB_SOURCE_MIRROR, --source-mirror): expected "
                         "http(s)://HOST[:PORT][/PATH], e.g. http://127.0.0.1:8765")
    return mirror


@dataclass(frozen=True)
class HubSettings:
    """Where models are resolved from and published to; None takes the environment's value."""

    endpoint: str | None = None  # GNHUB_ENDPOINT (else HF_ENDPOINT, else huggingface.co)
    org: str | None = None  # GNHUB_ORG, default "gnhub"
    hub_dir: str | None = None  # GNHUB_HUB_DIR: a directory laid out as ORG/NAME/
    token: str | None = None  # else huggingface_hub's (HF_TOKEN, `hf auth login`); never printed
    source_mirror: str | None = None  # GNHUB_SOURCE_MIRROR, checked when set
    quiet: bool | None = None  # GNHUB_QUIET; default: quiet when stderr is not a terminal
    keep_source: bool = False  # keep an upstream file downloaded for conversion in the cache

    def __post_init__(self):
        check_mirror(self.source_mirror)

    def resolved(self) -> HubSettings:
        """Every field set: the argument, else the environment, else the default."""
        quiet = self.quiet if self.quiet is not None else _flag("GNHUB_QUIET")
        hub_dir = self.hub_dir or _path("GNHUB_HUB_DIR")
        return HubSettings(self.endpoint or _env("GNHUB_ENDPOINT"), self.org or _env("GNHUB_ORG") or DEFAULT_ORG,
                           str(hub_dir) if hub_dir else None, self.token,
                           self.source_mirror or _env("GNHUB_SOURCE_MIRROR"),
                           quiet if quiet is not None else not sys.stderr.isatty(), self.keep_source)

    def merged(self, **values) -> HubSettings:
        """These settings with the given values (those not None) replacing them."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

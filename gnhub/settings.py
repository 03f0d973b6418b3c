"""Every GNHUB_* environment variable, read here and nowhere else; arguments override them.

    GNHUB_CACHE             gnhub's cache (default $XDG_CACHE_HOME/gnhub, else ~/.cache/gnhub)
    GNHUB_ZOO_FILE          a JSON file of your own zoo entries
    GNHUB_HUB_DIR           a directory hub (ORG/NAME/) used instead of a server
    GNHUB_ENDPOINT          the hub's endpoint (else HF_ENDPOINT, else huggingface.co)
    GNHUB_ORG               where zoo names live on the hub, as ORG/NAME (default gnhub)
    GNHUB_SOURCE_MIRROR     replaces the scheme and host of the zoo's upstream download URLs
    GNHUB_QUIET             no progress bars (default: quiet when stderr is not a terminal)
    GNHUB_MAX_IMAGE_PIXELS  larger images are refused before they are decoded (default 50 million)
    GNHUB_MALLOC            "system" leaves glibc's malloc as it is (see gnhub/allocator.py)
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import GnhubError

__all__ = ["DEFAULT_ORG", "HubSettings", "MAX_IMAGE_PIXELS", "cache_dir", "max_image_pixels", "system_malloc",
    "zoo_file"]

DEFAULT_ORG = "gnhub"
MAX_IMAGE_PIXELS = 50_000_000  # masks are kept at full resolution


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def cache_dir() -> Path:
    """gnhub's cache: GNHUB_CACHE, else $XDG_CACHE_HOME/gnhub, else ~/.cache/gnhub."""
    base = _env("GNHUB_CACHE")
    if base:
        return Path(base)
    return Path(_env("XDG_CACHE_HOME") or Path.home() / ".cache") / "gnhub"


def zoo_file() -> str | None:
    return _env("GNHUB_ZOO_FILE")


def max_image_pixels() -> int:
    try:
        return int(os.environ.get("GNHUB_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    except ValueError:
        raise GnhubError("GNHUB_MAX_IMAGE_PIXELS must be a whole number of pixels") from None


def system_malloc() -> bool:
    return os.environ.get("GNHUB_MALLOC") == "system"


@dataclass(frozen=True)
class HubSettings:
    """Where models are resolved from and published to; None takes the environment's value."""

    endpoint: str | None = None  # GNHUB_ENDPOINT (else HF_ENDPOINT, else huggingface.co)
    org: str | None = None  # GNHUB_ORG, default "gnhub"
    hub_dir: str | None = None  # GNHUB_HUB_DIR: a directory laid out as ORG/NAME/
    token: str | None = None  # else huggingface_hub's (HF_TOKEN, `hf auth login`); never printed
    source_mirror: str | None = None  # GNHUB_SOURCE_MIRROR
    quiet: bool | None = None  # GNHUB_QUIET; default: quiet when stderr is not a terminal
    keep_source: bool = False  # keep an upstream file downloaded for conversion in the cache

    def resolved(self) -> HubSettings:
        """Every field set: the argument, else the environment, else the default."""
        quiet = self.quiet if self.quiet is not None else bool(_env("GNHUB_QUIET")) or not sys.stderr.isatty()
        return HubSettings(self.endpoint or _env("GNHUB_ENDPOINT"), self.org or _env("GNHUB_ORG") or DEFAULT_ORG,
                           self.hub_dir or _env("GNHUB_HUB_DIR"), self.token,
                           self.source_mirror or _env("GNHUB_SOURCE_MIRROR"), quiet, self.keep_source)

    def merged(self, **values) -> HubSettings:
        """These settings with the given values (those not None) replacing them."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

"""load(): a model directory, `hf-hub:owner/repo[@rev]` or a zoo name -> a ready model in eval mode."""
from __future__ import annotations

from pathlib import Path

from .hub import HubSettings, resolve
from .modeling import GNModel


def load(
    name_or_path: str | Path,
    device: str = "cpu",
    *,
    endpoint: str | None = None,
    org: str | None = None,
    hub_dir: str | None = None,
    token: str | None = None,
) -> GNModel:
    """The model (a GNMaskRCNN, or a GNResNetClassifier for a bare backbone), its weights'
    sha256 checked against config.json.

    A zoo name (see `gnhub.list_models()`) is fetched from ORG/NAME on the hub: the Hugging Face
    Hub through huggingface_hub's cache (HF_HUB_OFFLINE works once cached), or a directory hub
    (`hub_dir` / GNHUB_HUB_DIR). `endpoint` / GNHUB_ENDPOINT and `org` / GNHUB_ORG select a mirror.
    """
    path = resolve(name_or_path, HubSettings(endpoint, org, hub_dir, token))
    return GNModel.from_pretrained(path).to(device).eval()

"""GNHUB_* variables, read strictly in gnhub/settings.py: empty means unset, anything not listed is
one clear error naming the variable, paths expand ~, limits must be positive."""
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import GNHUB, assert_one_line_error

from gnhub import settings
from gnhub.errors import GnhubError
from gnhub.images import load_image
from gnhub.settings import HubSettings

ZOO_NAME = "mask_rcnn_r50_fpn_gn-all_2x_coco"


@pytest.mark.parametrize("value,quiet", [("1", True), ("0", False), ("true", True), ("False", False),
                                         ("yes", True), ("no", False), ("on", True), ("OFF", False)])
def test_quiet_reads_yes_and_no(monkeypatch, value, quiet):
    monkeypatch.setenv("GNHUB_QUIET", value)
    assert HubSettings().resolved().quiet is quiet
    assert HubSettings(quiet=not quiet).resolved().quiet is (not quiet)  # the argument wins


def test_an_unknown_quiet_value_is_one_line(tmp_path):
    proc = subprocess.run(GNHUB + ["info", ZOO_NAME], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GNHUB_QUIET": "maybe"})
    assert_one_line_error(proc, "GNHUB_QUIET='maybe'", "1/0, true/false, yes/no or on/off")
    proc = subprocess.run(GNHUB + ["info", ZOO_NAME], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GNHUB_QUIET": ""})  # empty: unset
    assert proc.returncode == 0, proc.stderr


def test_the_cache_path_expands_home_and_is_made_absolute(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "GNHUB_CACHE": "~/x"}
    proc = subprocess.run(GNHUB + ["cache"], capture_output=True, text=True, timeout=60, env=env, cwd=work)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(f"in {tmp_path / 'home' / 'x'}"), proc.stdout
    assert not (work / "~").exists()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GNHUB_CACHE", "rel")
    assert settings.cache_dir() == work / "rel"
    monkeypatch.setenv("GNHUB_CACHE", "")  # empty: unset
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG specification says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings.cache_dir() == tmp_path / "home" / ".cache" / "gnhub"
    proc = subprocess.run(GNHUB + ["cache"], capture_output=True, text=True, timeout=60,
                          env={**env, "GNHUB_CACHE": "~no_such_user_here/x"}, cwd=work)
    assert_one_line_error(proc, "GNHUB_CACHE='~no_such_user_here/x'", "full path")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1e9", "inf"])
def test_non_positive_or_unreadable_limits_are_refused_naming_the_variable(monkeypatch, value):
    for name, read in (("GNHUB_MAX_IMAGE_PIXELS", lambda: load_image(np.zeros((50, 60, 3), np.uint8))),
                       ("GNHUB_MAX_DOWNLOAD_BYTES", settings.max_download_bytes),
                       ("GNHUB_DOWNLOAD_STALL_SECONDS", settings.download_stall_seconds),
                       ("GNHUB_DOWNLOAD_TOTAL_SECONDS", settings.download_total_seconds)):
        if value == "1e9" and "SECONDS" in name:  # seconds may be written so
            continue
        monkeypatch.setenv(name, value)
        with pytest.raises(GnhubError, match=f"{name}='{value}': must be .* above 0"):
            read()
        monkeypatch.setenv(name, "")  # empty: unset, the default
        read()


def test_the_image_limit_is_the_one_that_applies_above_pillows(tmp_path, monkeypatch):
    """Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 megapixels) as
    decompression bombs; gnhub raises that bound to its own limit, so gnhub's is the one that
    applies and the one the message names."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(19000, 10000))  # 190 megapixels, read no further than its header
    monkeypatch.setenv("GNHUB_MAX_IMAGE_PIXELS", "185000000")
    with pytest.raises(GnhubError, match="19000x10000 is 190 megapixels, above gnhub's limit of 185 "):
        load_image(big)
    monkeypatch.setenv("GNHUB_MAX_IMAGE_PIXELS", "300000000")
    with pytest.raises(GnhubError, match="not a readable image"):  # past both size checks: the missing pixels
        load_image(big)
    assert Image.MAX_IMAGE_PIXELS == 300_000_000
    monkeypatch.setenv("GNHUB_MAX_IMAGE_PIXELS", "1000")  # Pillow's bound is never lowered
    with pytest.raises(GnhubError, match=r"60x50 is 0.003 megapixels, above gnhub's limit of 0.001 "):
        load_image(np.zeros((50, 60, 3), np.uint8))
    assert Image.MAX_IMAGE_PIXELS == 300_000_000


def _png_header(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of that size whose pixel data is missing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


def test_malloc_takes_system_or_gnhub(monkeypatch):
    for value, system in (("system", True), ("gnhub", False), ("", False)):
        monkeypatch.setenv("GNHUB_MALLOC", value)
        assert settings.system_malloc() is system
    monkeypatch.setenv("GNHUB_MALLOC", "sytem")
    with pytest.raises(GnhubError, match="GNHUB_MALLOC='sytem'"):
        settings.system_malloc()


def test_zoo_file_and_hub_dir_expand_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GNHUB_ZOO_FILE", "~/zoo.json")
    monkeypatch.setenv("GNHUB_HUB_DIR", "~/hub")
    assert settings.zoo_file() == str(tmp_path / "zoo.json")
    assert HubSettings().resolved().hub_dir == str(tmp_path / "hub")
    assert Path(HubSettings(hub_dir="given").resolved().hub_dir) == Path("given")  # an argument is as given

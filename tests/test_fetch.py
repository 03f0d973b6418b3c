"""Loading a zoo name on a fresh machine: the upstream file fetched over real HTTP (a server on
127.0.0.1), hash-checked, converted, verified and cached; errors are one clear line."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import sigint_default
from source_server import SourceServer
from test_cli import GNHUB, assert_one_line_error

import gnhub
from gnhub import cache, download, zoo
from gnhub.errors import GnhubError
from gnhub.samples import sample_images
from gnhub.settings import HubSettings

NAME = "my_r50_gn"
UPSTREAM = "https://upstream.example/models/small_r50.pth"


@pytest.fixture()
def server():
    s = SourceServer()
    yield s
    s.stop()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A fresh machine: an empty gnhub cache, and an empty directory hub (no network)."""
    values = {"GNHUB_CACHE": str(tmp_path / "cache"), "GNHUB_HUB_DIR": str(tmp_path / "hub"), "GNHUB_QUIET": "1"}
    (tmp_path / "hub").mkdir()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    return values


def register_file(tmp_path, entries, monkeypatch):
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setenv("GNHUB_ZOO_FILE", str(path))
    return path


def test_first_load_fetches_once_for_two_processes_then_loads_offline(
        server, env, small_source, small_dir, tmp_path, monkeypatch):
    data = small_source.read_bytes()
    server.files["/models/small_r50.pth"] = data
    register_file(tmp_path, [{"name": NAME, "url": "https://upstream.example/models/small_r50.pth",
                              "sha256": hashlib.sha256(data).hexdigest(), "box_ap": 40.2, "mask_ap": 36.4}],
                  monkeypatch)
    monkeypatch.setenv("GNHUB_SOURCE_MIRROR", server.url)  # the upstream host, mirrored on 127.0.0.1
    damaged = cache.cache_dir() / "models" / NAME / hashlib.sha256(data).hexdigest()
    damaged.mkdir(parents=True)  # a cache entry that lost its config.json: converted again, once
    (damaged / "model.safetensors").write_bytes(b"half")
    procs = [subprocess.Popen(GNHUB + ["fetch", NAME], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "GNHUB_QUIET": ""}) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len({o.strip() for o, _ in outs}) == 1 and len(server.gets) == 1  # one download, one conversion
    assert any("waiting" in e for _, e in outs), outs
    path = cache.cached(zoo.get(NAME))
    assert outs[0][0].strip() == f"{NAME}: {path}"
    assert {p.name for p in path.iterdir()} >= {"config.json", "golden.safetensors", "model.safetensors",
                                                "verification.json"}  # and gnhub's ledger
    assert not (cache.cache_dir() / "downloads" / NAME).exists()  # the source is not kept by default

    got = gnhub.load(NAME).predict(sample_images()[2])
    want = gnhub.load(small_dir).predict(sample_images()[2])
    for k in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(got[k], want[k]), k

    server.stop()  # a new process, no server, HF offline: from the cache, without a request
    proc = subprocess.run(GNHUB + ["verify", NAME], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    listed = subprocess.run(GNHUB + ["list", "my_*"], capture_output=True, text=True, timeout=60).stdout
    assert NAME in listed and "cached" in listed
    proc = subprocess.run(GNHUB + ["cache", "rm", NAME], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not path.exists()


def test_a_cut_transfer_resumes_with_a_range_request(server, env, tmp_path):
    data = os.urandom(3 << 20)
    server.files["/f.pth"] = data
    server.cut_after = 1 << 20
    digest = download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest(), quiet=True)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.pth").read_bytes() == data and not (tmp_path / "f.pth.part").exists()
    assert server.gets[0][1] is None and server.gets[1][1].startswith("bytes=")


def test_server_errors_are_retried_and_missing_files_are_not(server, env, tmp_path):
    server.files["/f.pth"] = b"x" * 1000
    server.errors = [500, 503]
    download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(b"x" * 1000).hexdigest())
    assert len(server.gets) == 3
    with pytest.raises(GnhubError, match=r"/nope.pth: HTTP 404 .*GNHUB_SOURCE_MIRROR"):
        download.download(server.url + "/nope.pth", tmp_path / "g.pth")
    server.errors = [500] * 10
    with pytest.raises(GnhubError, match="download failed after 4 tries"):
        download.download(server.url + "/f.pth", tmp_path / "h.pth")


def test_a_hash_mismatch_deletes_the_download(server, env, tmp_path):
    data = os.urandom(100_000)
    server.files["/f-0123abcd.pth"] = data
    server.wrong_bytes = True
    with pytest.raises(GnhubError) as e:
        download.download(server.url + "/f-0123abcd.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest())
    assert server.url in str(e.value) and hashlib.sha256(data).hexdigest() in str(e.value)
    assert list(tmp_path.glob("f.pth*")) == []
    with pytest.raises(GnhubError, match="does not match the expected 0123abcd"):  # the published prefix
        download.download(server.url + "/f-0123abcd.pth", tmp_path / "f.pth", sha256_prefix="0123abcd")


def test_ctrl_c_mid_download_keeps_the_part_for_resuming(server, env, tmp_path):
    data = os.urandom(4 << 20)
    server.files["/f.pth"] = data
    server.seconds_per_chunk = 0.01
    code = (f"from gnhub.download import download; from pathlib import Path; "
            f"download({server.url + '/f.pth'!r}, Path({str(tmp_path / 'f.pth')!r}), quiet=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, preexec_fn=sigint_default)
    part = tmp_path / "f.pth.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 1 << 20):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not (tmp_path / "f.pth").exists()
    server.seconds_per_chunk = 0
    download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest())
    assert (tmp_path / "f.pth").read_bytes() == data and server.gets[-1][1] == f"bytes={kept}-"


def test_a_full_disk_is_one_clear_error(server, env, tmp_path):
    server.files["/f.pth"] = os.urandom(4 << 20)
    code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
            "from gnhub.download import download; from gnhub.errors import GnhubError; from pathlib import Path\n"
            f"try: download({server.url + '/f.pth'!r}, Path({str(tmp_path / 'f.pth')!r}), quiet=True)\n"
            "except GnhubError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "writing failed" in out and "free some space" in out
    assert not (tmp_path / "f.pth").exists()


def test_no_network_names_the_url_the_mirror_and_the_manual_path(env, tmp_path, monkeypatch):
    register_file(tmp_path, [{"name": NAME, "url": "http://127.0.0.1:9/x/model.pth", "sha256": "a" * 64}],
                  monkeypatch)
    proc = subprocess.run(GNHUB + ["predict", str(sample_images()[3]), "--model", NAME, "--out", tmp_path / "p"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "http://127.0.0.1:9/x/model.pth", "GNHUB_SOURCE_MIRROR",
                          "gnhub convert FILE -o DIR` and pass DIR as the model")
    assert not any((tmp_path / "cache" / "models").glob("*/*"))


@pytest.mark.parametrize("entries,fragment", [
    ("not json", "not readable JSON"),
    ({"name": "x"}, "must hold a list"),
    ([{"name": "ok", "url": "https://h/x.pth"}], "entry 'ok': sha256 must be"),
    ([{"name": "ok", "url": "ftp://h/x.pth", "sha256": "a" * 64}], "url must be"),
    ([{"name": "mask_rcnn_r50_fpn_gn-all_2x_coco", "url": "https://h/x.pth", "sha256": "a" * 64}], "built-in"),
    ([{"name": "ok", "url": "https://h/x.pth", "sha256": "a" * 64, "box_AP": 1}], "unknown fields"),
    ([{"name": "ok", "url": "https://h/x.pth", "sha256": "a" * 64, "settings": {"rpn.nms_iuo": 0.6}}],
     "entry 'ok': settings: 'rpn.nms_iuo' is not a config field; did you mean rpn.nms_iou"),
    ([{"name": "ok", "url": "https://h/x.pth", "sha256": "a" * 64, "settings": {"rpn.nms_iou": 7}}],
     "entry 'ok': settings: rpn.nms_iou is 7; expected a number from 0 to 1"),
    ([{"name": "ok", "url": "https://h/x.pth", "sha256": "a" * 64, "settings": [0.6]}],
     "entry 'ok': settings must be an object of config fields"),
])
def test_a_malformed_registry_file_is_one_clear_error(tmp_path, monkeypatch, entries, fragment):
    path = tmp_path / "zoo.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    proc = subprocess.run(GNHUB + ["list"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GNHUB_ZOO_FILE": str(path)})
    assert_one_line_error(proc, str(path), fragment)


def test_registered_entries_and_mirrors():
    entry = gnhub.register("my_model", "https://example.org/a/b/model_final.pkl", "ab" * 32, box_ap=41.0,
                           mask_ap=37.0, depth=101)
    assert entry.source_format == "detectron" and entry.file == "model_final.pkl" and "my_model" in zoo.list_models()
    assert cache.source_url(entry, "http://mirror.local:8000/") == "http://mirror.local:8000/a/b/model_final.pkl"
    zoo._REGISTERED.clear()


def test_an_endless_body_stops_at_the_size_ceiling_and_leaves_nothing(server, env, tmp_path, monkeypatch):
    server.endless = True
    monkeypatch.setenv("GNHUB_MAX_DOWNLOAD_BYTES", str(4 << 20))
    t0 = time.monotonic()
    with pytest.raises(GnhubError) as e:
        download.download(server.url + "/f.pth", tmp_path / "f.pth")
    assert time.monotonic() - t0 < 10
    assert f"{server.url}/f.pth: more than {4 << 20} bytes" in str(e.value)
    assert "GNHUB_MAX_DOWNLOAD_BYTES" in str(e.value)
    assert list(tmp_path.glob("f.pth*")) == [] and len(server.gets) == 1  # not retried, no .part kept
    server.endless = False  # a Content-Length above the ceiling is refused before a byte is written
    server.files["/g.pth"] = bytes(5 << 20)
    (tmp_path / "g.pth.part").write_bytes(bytes(1 << 20))  # resumed: the kept part counts
    with pytest.raises(GnhubError, match=f"the server announces {5 << 20} bytes, above gnhub's limit"):
        download.download(server.url + "/g.pth", tmp_path / "g.pth")
    assert list(tmp_path.glob("g.pth*")) == [] and server.gets[-1][1] == f"bytes={1 << 20}-"


def test_a_part_beyond_the_ceiling_is_not_resumed(server, env, tmp_path, monkeypatch):
    data = os.urandom(100_000)
    server.files["/f.pth"] = data
    (tmp_path / "f.pth.part").write_bytes(bytes(300_000))  # left by an unbounded run
    monkeypatch.setenv("GNHUB_MAX_DOWNLOAD_BYTES", "200000")
    download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest())
    assert (tmp_path / "f.pth").read_bytes() == data and server.gets == [("/f.pth", None)]


@pytest.mark.parametrize("seconds_per_byte", [0.05, 30])  # a drip, and silence after the headers
def test_a_stalled_download_is_retried_then_one_clear_error(server, env, tmp_path, monkeypatch, seconds_per_byte):
    server.files["/f.pth"] = os.urandom(1 << 20)
    server.seconds_per_byte = seconds_per_byte
    monkeypatch.setenv("GNHUB_DOWNLOAD_STALL_SECONDS", "0.4")
    t0 = time.monotonic()
    with pytest.raises(GnhubError) as e:
        download.download(server.url + "/f.pth", tmp_path / "f.pth")
    took = time.monotonic() - t0
    assert 4 * 0.4 <= took < 4 * 0.4 + 3, took  # each of the 4 tries ends after the stall deadline
    assert f"{server.url}/f.pth: download failed after 4 tries (stalled at " in str(e.value)
    assert "GNHUB_DOWNLOAD_STALL_SECONDS" in str(e.value)
    part = tmp_path / "f.pth.part"
    kept = part.stat().st_size if part.exists() else 0
    assert kept < 1000 and not (tmp_path / "f.pth").exists()
    if kept:  # what dripped in is resumed
        assert f"the {kept} bytes so far are kept in {part}" in str(e.value) and server.gets[-1][1] is not None


def test_the_total_deadline_stops_a_slow_download_which_the_next_run_resumes(server, env, tmp_path, monkeypatch):
    data = os.urandom(8 << 20)
    server.files["/f.pth"] = data
    server.seconds_per_chunk = 0.05  # 1.3 MB/s: never stalled, but 6 s for the file
    monkeypatch.setenv("GNHUB_DOWNLOAD_TOTAL_SECONDS", "1")
    t0 = time.monotonic()
    with pytest.raises(GnhubError) as e:
        download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest())
    assert time.monotonic() - t0 < 3
    kept = (tmp_path / "f.pth.part").stat().st_size
    assert 0 < kept < len(data) and len(server.gets) == 1
    assert f"{server.url}/f.pth: not downloaded within 1 s; the {kept} bytes so far are kept" in str(e.value)
    assert "GNHUB_DOWNLOAD_TOTAL_SECONDS" in str(e.value)
    server.seconds_per_chunk = 0
    monkeypatch.delenv("GNHUB_DOWNLOAD_TOTAL_SECONDS")
    download.download(server.url + "/f.pth", tmp_path / "f.pth", hashlib.sha256(data).hexdigest())
    assert (tmp_path / "f.pth").read_bytes() == data and server.gets[-1][1] == f"bytes={kept}-"


def test_fetch_of_an_endless_body_is_one_line_and_leaves_no_part(server, env, tmp_path, monkeypatch):
    server.endless = True
    register_file(tmp_path, [{"name": NAME, "url": UPSTREAM, "sha256": "a" * 64}], monkeypatch)
    env = {**os.environ, "GNHUB_SOURCE_MIRROR": server.url, "GNHUB_MAX_DOWNLOAD_BYTES": "3000000"}
    proc = subprocess.run(GNHUB + ["fetch", NAME], capture_output=True, text=True, timeout=120, env=env)
    assert_one_line_error(proc, f"{server.url}/models/small_r50.pth: more than 3000000 bytes",
                          "GNHUB_MAX_DOWNLOAD_BYTES")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("mirror", ["localhost", "127.0.0.1:8765"])
def test_a_mirror_without_a_scheme_is_one_line_before_any_try(env, tmp_path, monkeypatch, mirror):
    register_file(tmp_path, [{"name": NAME, "url": UPSTREAM, "sha256": "a" * 64}], monkeypatch)
    for args, extra in ((["--source-mirror", mirror, "fetch", NAME], {}),
                        (["fetch", NAME], {"GNHUB_SOURCE_MIRROR": mirror})):
        proc = subprocess.run(GNHUB + args, capture_output=True, text=True, timeout=60, env={**os.environ, **extra})
        assert_one_line_error(proc, repr(mirror), "GNHUB_SOURCE_MIRROR, --source-mirror",
                              "http(s)://HOST[:PORT][/PATH]")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no "downloading", no retries


@pytest.mark.parametrize("mirror", ["localhost", "127.0.0.1:8765", "ftp://h/x", "http://h:99999", "http://h/?q=1",
                                    "http://user@h", "https://"])
def test_a_mirror_is_checked_when_the_settings_are_read(env, tmp_path, monkeypatch, mirror):
    register_file(tmp_path, [{"name": NAME, "url": UPSTREAM, "sha256": "a" * 64}], monkeypatch)
    with pytest.raises(GnhubError, match="expected http"):
        gnhub.load(NAME, source_mirror=mirror)
    monkeypatch.setenv("GNHUB_SOURCE_MIRROR", mirror)
    with pytest.raises(GnhubError, match="expected http"):
        gnhub.load(NAME)
    for good in ("http://127.0.0.1:8765", "https://mirror.example/base/"):
        assert HubSettings(source_mirror=good).source_mirror == good


def test_the_no_network_hint_names_the_upstream_host_behind_a_mirror(env, tmp_path, monkeypatch):
    register_file(tmp_path, [{"name": NAME, "url": "https://upstream.example/x/model.pth", "sha256": "a" * 64}],
                  monkeypatch)
    with pytest.raises(GnhubError) as e:
        gnhub.load(NAME, source_mirror="http://127.0.0.1:9/base")
    assert "http://127.0.0.1:9/base/x/model.pth: download failed after 4 tries" in str(e.value)
    assert "a mirror of upstream.example," in str(e.value)

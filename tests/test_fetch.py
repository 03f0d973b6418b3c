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

NAME = "my_r50_gn"


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

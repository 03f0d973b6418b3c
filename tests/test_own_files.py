"""gnhub touches only what is its own: cache removal by name only, registry names and files that
are data, predict outputs it marked, an input never overwritten, debris of killed runs."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from source_server import SourceServer
from test_cli import GNHUB, assert_one_line_error

from gnhub import cache, zoo
from gnhub.errors import GnhubError
from gnhub.samples import sample_images


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """An empty cache with one converted-looking entry, and a user's folder beside it."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GNHUB_CACHE", str(root))
    monkeypatch.setenv("GNHUB_HUB_DIR", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    entry = root / "models" / "mask_rcnn_r50_fpn_gn-all_2x_coco" / ("8eee02a6" + "0" * 56)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    return root, victim


@pytest.mark.parametrize("name", ["../../victim", "", "..", ".", "/abs", "models/../..", "a/b", "locks"])
def test_cache_rm_takes_names_and_touches_nothing_else(env, tmp_path, name):
    root, victim = env
    if name == "/abs":
        name = str(victim)
    proc = subprocess.run(GNHUB + ["cache", "rm", name], capture_output=True, text=True, timeout=60,
                          cwd=root / "models")
    assert_one_line_error(proc, "not a zoo model or an entry of gnhub's cache")
    assert (victim / "thesis.txt").read_text() == "years of work"
    assert any((root / "models").rglob("config.json"))


def test_cache_rm_of_a_name_and_while_another_process_fetches_it(env):
    root, _ = env
    name = "mask_rcnn_r50_fpn_gn-all_2x_coco"
    lock = cache._lock(name)
    with lock:
        with pytest.raises(GnhubError, match="another process is downloading or converting it"):
            cache.remove(name)
    assert cache.remove(name) == [str(root / "models" / name)]
    assert cache.remove(name) == []  # a zoo name not cached: nothing to do, no error
    assert cache.entries() == []


@pytest.mark.parametrize("entry, fragment", [
    ({"file": "../../../victim/x.pth"}, "'../../../victim/x.pth' (from file) must be a plain file name"),
    ({"url": "https://up.example/m/..%2F..%2Fvictim%2Fx.pth"}, "(from the url) must be a plain file name"),
    ({"file": "/tmp/victim/x.pth"}, "must be a plain file name"),
    ({"file": ".hidden.pth"}, "must be a plain file name"),
    ({"name": "../x"}, "name must be"),
])
def test_registry_names_and_files_are_data(tmp_path, monkeypatch, entry, fragment):
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps([{"name": "mine", "url": "https://up.example/m/x.pth", "sha256": "a" * 64, **entry}]))
    monkeypatch.setenv("GNHUB_ZOO_FILE", str(path))
    with pytest.raises(GnhubError, match=fragment.replace("(", "\\(").replace(")", "\\)")):
        zoo.models()
    with pytest.raises(GnhubError, match="must be a plain file name|name must be"):
        zoo.register(**{"name": "mine", "url": "https://up.example/m/x.pth", "sha256": "a" * 64, **entry})


def test_a_failed_conversion_of_a_registered_file_removes_only_the_cache_download(env, tmp_path, monkeypatch):
    root, victim = env
    server = SourceServer()
    try:
        data = b"not a checkpoint" * 100
        server.files["/m/x.pth"] = data
        zoo.register("mine", "https://up.example/m/x.pth", hashlib.sha256(data).hexdigest())
        monkeypatch.setenv("GNHUB_SOURCE_MIRROR", server.url)
        with pytest.raises(GnhubError, match="not a readable PyTorch checkpoint"):
            cache.fetch(zoo.get("mine"), quiet=True, mirror=server.url)
    finally:
        server.stop()
        zoo._REGISTERED.clear()
    assert (victim / "thesis.txt").read_text() == "years of work"
    assert not (root / "downloads" / "mine").exists()  # no debris: no empty folder listed as an entry
    assert [r["name"] for r in cache.entries()] == ["mask_rcnn_r50_fpn_gn-all_2x_coco"]


def test_predict_writes_only_into_its_own_output_and_never_over_an_input(small_dir, tmp_path):
    folder = tmp_path / "F"
    folder.mkdir()
    photo = folder / "photo.png"
    photo.write_bytes(sample_images()[3].read_bytes())
    (folder / "results.json").write_text('{"mine": true}')
    before = photo.read_bytes()
    proc = subprocess.run(GNHUB + ["predict", str(photo), "-m", str(small_dir), "-o", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "is not an empty folder or an earlier gnhub predict output")
    out = tmp_path / "out"
    proc = subprocess.run(GNHUB + ["predict", str(photo), "-m", str(small_dir), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (out / "street.png").write_bytes(b"a user's file put here later")
    inside = out / "photo.png"  # an earlier overlay, now an input of a run into the same folder
    proc = subprocess.run(GNHUB + ["predict", str(inside), str(sample_images()[0]), "-m", str(small_dir), "-o",
                                   str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "street.png").read_bytes() == b"a user's file put here later" and (out / "street_2.png").is_file()
    assert (out / "photo_2.png").is_file() and json.loads((out / "photo_2.json").read_text())["image"] == str(inside)
    assert photo.read_bytes() == before and (folder / "results.json").read_text() == '{"mine": true}'


def test_a_model_that_fails_to_load_leaves_no_output_folder(tmp_path):
    proc = subprocess.run(GNHUB + ["predict", str(sample_images()[3]), "-m", str(tmp_path / "nope"), "-o",
                                   str(tmp_path / "p")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "p").exists()


def test_a_broken_hash_store_never_stops_a_local_model_from_loading(small_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for cache_dir in (blocker, blocker / "below"):
        code = f"import gnhub; gnhub.load({str(small_dir)!r}); print('ok')"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "GNHUB_CACHE": str(cache_dir)})
        assert proc.stdout.strip() == "ok", proc.stderr

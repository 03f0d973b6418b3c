"""gnhub never deletes or writes what is not its own, and finds an unwritable output before working."""
import json
import os
import shutil
import stat

import pytest
import torch
from test_cli import assert_one_line_error, run

from gnhub import files
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.hub import check_repo_id
from gnhub.layout import new_model_dir
from gnhub.publish import publish_model
from gnhub.report import Report, StageCheck
from gnhub.samples import sample_images
from gnhub.settings import HubSettings
from gnhub.weights import write_results


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("repo_id", ["../escape", "/abs/olute", ".", "a/b/c", "", "org/..", "org/a--b", "org/x.git",
                                     "noslash", "org/" + "x" * 97])
def test_repo_ids_follow_the_hub_rules(repo_id):
    with pytest.raises(GnhubError, match="not a hub repository id"):
        check_repo_id(repo_id)


def test_publish_with_a_bad_repo_id_touches_nothing(small_dir, tmp_path):
    hub = tmp_path / "hub"
    (hub / "org" / "theirs").mkdir(parents=True)
    (hub / "org" / "theirs" / "keep.txt").write_text("mine")
    outside = tmp_path / "escape"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    for repo_id in ("../escape", ".", "org/theirs/x", str(outside)):
        with pytest.raises(GnhubError, match="not a hub repository id"):
            publish_model(small_dir, repo_id, settings=HubSettings(hub_dir=str(hub)))
    for extra in ([], ["--dry-run"]):
        assert_one_line_error(run("publish", small_dir, "--hub-dir", hub, "--repo-id", "../escape", *extra),
                              "not a hub repository id")
    # a directory in the hub that gnhub did not publish is not replaced either
    with pytest.raises(GnhubError, match="not a model published to the directory hub"):
        publish_model(small_dir, "org/theirs", settings=HubSettings(hub_dir=str(hub)))
    assert tree(tmp_path) == before and (hub / "org" / "theirs" / "keep.txt").read_text() == "mine"


def test_force_replaces_only_a_gnhub_model_directory(small_source, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for dest, match in ((folder, "is not a gnhub model directory"), (afile, "is not a directory")):
        with pytest.raises(GnhubError, match=match):
            convert(small_source, dest, force=True, verify=False)
    assert (folder / "thesis.tex").read_text() == "years of work" and afile.read_text() == "mine"
    monkeypatch.chdir(folder)  # `-o . --force`: the current directory is never replaced
    assert_one_line_error(run("convert", small_source, "-o", ".", "--force", "--no-verify"), "current directory")
    assert tree(tmp_path) == ["mine", "mine/thesis.tex", "notes.txt"]

    model = tmp_path / "model"
    convert(small_source, model, verify=False)
    config = (model / "config.json").read_text()
    (model / "extra.txt").write_text("a user's file in a model directory")
    with pytest.raises(GnhubError, match="is not a gnhub model directory"):
        convert(small_source, model, force=True, verify=False)
    (model / "extra.txt").unlink()

    def fail(src, dst, flag):  # the final swap fails: the old model stays, nothing stray is left
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_rename2", fail)
    with pytest.raises(GnhubError, match="writing failed.*nothing was written"):
        convert(small_source, model, force=True, verify=False)
    monkeypatch.undo()
    assert (model / "config.json").read_text() == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model", "notes.txt"]
    convert(small_source, model, force=True, verify=False)  # a gnhub model directory is replaced


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_output_is_found_before_verification(small_source, tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile" / "out", "proc": "/proc/gnhub-out"}[where]
    messages = []
    with pytest.raises(GnhubError, match="cannot write there"):
        convert(small_source, out, log=messages.append)
    assert not any("verifying" in m for m in messages)


def test_predict_and_eval_outputs_refuse_what_is_not_theirs(small_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"a user's photo")
    (tmp_path / "f").write_text("a file")
    image = sample_images()[3]
    assert_one_line_error(run("predict", image, "--model", small_dir, "--out", mine), "choose another --out")
    assert_one_line_error(run("predict", image, "--model", small_dir, "--out", tmp_path / "f" / "x"),
                          "cannot be created")
    assert_one_line_error(run("verify", small_dir, "--json", tmp_path / "nodir" / "r.json"), "cannot write there")
    theirs = tmp_path / "theirs.json"
    theirs.write_text("{\"not\": \"results\"}")
    assert_one_line_error(run("eval", small_dir, "--images", tmp_path, "--annotations", theirs,
                              "--results", theirs), "exists, and gnhub did not write it")
    assert (mine / "photo.jpg").read_bytes() == b"a user's photo"
    assert json.loads(theirs.read_text()) == {"not": "results"}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_model_directory_files_all_get_the_umask_modes(tmp_path, umask):
    report = Report([StageCheck("a.png", "input", True, 0.0, 0.0, "rel <= 1e-4")], "float32", "test")
    old = os.umask(umask)
    try:
        with new_model_dir(tmp_path / "m") as tmp:
            (tmp / "config.json").write_text(json.dumps({"format_version": 1, "weights_sha256": ""}))
            write_results(tmp, report, {"x": torch.zeros(2)})  # safetensors writes 0600 files
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask
    shutil.rmtree(tmp_path / "m")

"""gnhub/files.py, the one owner of what gnhub writes (docs/files.md), proven by planted links, an
injected failure at every step of every replace, real SIGKILLs, concurrent processes, PID
namespaces, and a check of the source that no other module removes or renames anything."""
from __future__ import annotations

import ast
import fcntl
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from files_stub import Stub
from test_cli import assert_one_line_error, run

from gnhub import cache, files, hub, zoo
from gnhub.config import FORMAT_VERSION
from gnhub.errors import GnhubError
from gnhub.layout import new_export_dir, new_model_dir
from gnhub.predict import predict_files
from gnhub.samples import sample_images
from gnhub.train import loop

ROOT = Path(__file__).resolve().parents[1]
evaluate = importlib.import_module("gnhub.evaluate")  # the package exports a function of that name
TMP = files.TMP_PREFIX
ZOO_NAME = "mask_rcnn_r50_fpn_gn-all_2x_coco"


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(TMP + "*")]


def locked(path: Path) -> bool:
    """Whether a live holder locks this temporary (flock conflicts across descriptors, even in
    one process)."""
    target = path / files.LEDGER if path.is_dir() and not path.is_symlink() else path
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def child(code: str, **env) -> subprocess.Popen:
    """A Python process running `code` (gnhub and this file's Stub importable), its stdout piped."""
    prelude = f"import sys, time, json; from pathlib import Path\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def wait_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        proc.wait()
        pytest.fail(f"{line!r} instead of {expected!r}: {proc.stderr.read()}")


def image(folder: Path, name: str = "x.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(sample_images()[3].read_bytes())
    return path


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("GNHUB_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    yield tmp_path
    assert mine.read_text() == "a user's file"


# -- every replace, driven the cheapest way; each returns the version now visible (or None) ------------

def _model_like(tmp: Path, v: int) -> None:
    (tmp / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "weights_sha256": "", "v": v}))
    (tmp / "model.safetensors").write_text(str(v))


def _dir_version(dest: Path) -> int | None:
    if not dest.exists():
        return None
    v = json.loads((dest / "config.json").read_text())["v"]
    assert (dest / "model.safetensors").read_text() == str(v)  # never a mix of two runs
    return v


def drive_convert(root: Path, v: int) -> int | None:
    with new_model_dir(root / "model", force=True) as tmp:
        _model_like(tmp, v)
    return _dir_version(root / "model")


def drive_export(root: Path, v: int) -> int | None:
    with new_export_dir(root / "export", force=True) as tmp:
        _model_like(tmp, v)
    return _dir_version(root / "export")


def drive_publish(root: Path, v: int) -> int | None:
    src = root / f"src{v}"
    src.mkdir(exist_ok=True)
    _model_like(src, v)
    dest = root / "hub" / "org" / "m"
    hub._upload_to_dir(dest, {"config.json": src / "config.json", "model.safetensors": src / "model.safetensors"},
                       f"card {v}")
    return _dir_version(dest)


def drive_predict(root: Path, v: int) -> int | None:
    out = root / "pred"
    if not out.exists():
        out.mkdir()
        (root / "pred-user.txt").write_text("mine")
    predict_files(Stub(v), [image(root / "in")], out)
    data = json.loads((out / "results.json").read_text())
    assert json.loads((out / "x.json").read_text())["detections"] == data
    return round((data[0]["score"] - 0.5) * 100)


def drive_eval(root: Path, v: int) -> int | None:
    path = root / "results.json"
    parts = evaluate._start(path, {"model": "m", "annotations": "a", "images": "i"}, 0)
    files.append_line(parts / "rank0.jsonl", json.dumps({"image_id": 1, "detections": [v]}) + "\n", "--results")
    evaluate._finish(path, parts, [{"v": v}])
    evaluate.check_results(path)  # what the next eval checks first
    return json.loads(path.read_text())[0]["v"]


def drive_finetune(root: Path, v: int) -> int | None:
    work = root / "work"
    resume = (work / loop.CHECKPOINT).is_file()
    loop._check_work_dir(work, resume)
    with files.Folder(work, "--work-dir", hold=True) as folder:
        if not resume:
            loop._clear(folder)
        loop._append(folder, {"it": v})
        folder.write(loop.CHECKPOINT, str(v).encode())
    with new_model_dir(root / "tuned", force=True) as tmp:
        _model_like(tmp, v)
    assert (work / loop.CHECKPOINT).read_text() == str(v)
    return _dir_version(root / "tuned")


def drive_cache(root: Path, v: int) -> int | None:
    entry = zoo.get(ZOO_NAME)
    dest = cache.cache_dir() / "models" / ZOO_NAME / entry.expected_sha256
    with new_model_dir(dest, True, cache._entry_dir(entry)) as tmp:
        _model_like(tmp, v)
    found = cache.cached(entry)
    assert found in (None, dest)
    return _dir_version(found) if found else None


DRIVERS = {"convert": drive_convert, "export": drive_export, "publish": drive_publish, "predict": drive_predict,
           "eval": drive_eval, "finetune": drive_finetune, "cache": drive_cache}
STEPS = ["_temp_file", "_temp_dir", "_record", "_sha256_fd", "_rename_noreplace", "_rename2", "_write_ledger_tree",
         "_swap_in", "_move_aside", "_remove_temp", "sweep"]


class Killed(BaseException):
    """An interrupt at one step (Ctrl-C's kind: not an OSError, not a GnhubError)."""


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("command", list(DRIVERS))
def test_an_interrupt_at_any_step_of_a_replace_then_the_next_run(root, monkeypatch, command, step, when):
    drive = DRIVERS[command]
    assert drive(root, 1) == 1
    real, fired = getattr(files, step), []

    def once(*args, **kwargs):
        if fired:
            return real(*args, **kwargs)
        fired.append(step)
        if when == "after":
            real(*args, **kwargs)
        raise Killed(step)

    monkeypatch.setattr(files, step, once)
    try:
        assert drive(root, 2) == 2  # this step is not one of this command's
        assert not fired or step in ("_remove_temp", "sweep")
    except Killed:
        pass
    monkeypatch.undo()
    monkeypatch.setenv("GNHUB_CACHE", str(root / "cache"))
    assert drive(root, 3) == 3  # the next run: nothing left that it trips on, no stale output
    assert drive(root, 4) == 4
    # left only by an interrupt just after a temporary was made or while one was being removed (a
    # real kill ends the process, and its locks); any other process's next write sweeps what is dead
    left = temporaries(root)
    assert not left or step in ("_temp_file", "_temp_dir", "_remove_temp"), left
    if left:
        folders = sorted({str(p.parent) for p in left})
        sweep = f"from pathlib import Path; from gnhub import files; [files.sweep(Path(f)) for f in {folders!r}]"
        subprocess.run([sys.executable, "-c", sweep], check=True, timeout=60)
        assert all(locked(p) for p in temporaries(root)), temporaries(root)  # only this live process's


@pytest.mark.parametrize("command", list(DRIVERS))
def test_every_replace_works_without_renameat2(root, monkeypatch, command):
    """The portable path (no RENAME_NOREPLACE/RENAME_EXCHANGE): checked and renamed under the lock."""
    monkeypatch.setattr(files, "_renameat2", None)
    for v in (1, 2, 3):
        assert DRIVERS[command](root, v) == v
    assert not temporaries(root)


# -- links planted at every name gnhub writes ------------------------------------------------------

@pytest.fixture()
def victim(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("not gnhub's")
    return outside / "victim.txt"


def _outside_untouched(victim: Path) -> None:
    assert victim.read_text() == "not gnhub's"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("name", ["results.json", "x.png", "x.json", files.LEDGER, TMP + "planted"])
def test_a_link_at_any_name_predict_writes_is_never_followed(tmp_path, victim, monkeypatch, name):
    out = tmp_path / "out"
    predict_files(Stub(1), [image(tmp_path / "in")], out)
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to(victim)
    names = iter(["planted"] + [f"r{i}" for i in range(100)])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    try:
        predict_files(Stub(2), [image(tmp_path / "in")], out)
    except GnhubError as e:
        assert str(e).count("\n") == 0 and str(out) in str(e)
    _outside_untouched(victim)


@pytest.mark.parametrize("what", ["file", "log", "ledger", "temp", "dangling-temp", "eval-part", "dir-output"])
def test_a_link_at_any_name_gnhub_writes_is_never_followed(tmp_path, victim, monkeypatch, what):
    folder = tmp_path / "f"
    folder.mkdir()
    names = iter(["planted"] + [f"r{i}" for i in range(100)])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    target = {"file": "out.json", "log": "log.jsonl", "ledger": files.LEDGER, "temp": TMP + "planted",
              "dangling-temp": TMP + "planted", "eval-part": "r.json.parts", "dir-output": "model"}[what]
    if what == "eval-part":
        (victim.parent / "rank0.jsonl").symlink_to(victim)  # a parts folder that is a link, and a link inside
        (folder / target).symlink_to(victim.parent)
    else:
        (folder / target).symlink_to(victim if what != "dangling-temp" else tmp_path / "outside" / "new")
    with pytest.raises(GnhubError) if what in ("file", "log", "ledger", "eval-part", "dir-output") else _nothing():
        if what == "log":
            files.append_line(folder / "log.jsonl", "row\n")
        elif what == "eval-part":
            evaluate.check_results(folder / "r.json")
        elif what == "dir-output":
            with new_model_dir(folder / "model", force=True) as tmp:
                _model_like(tmp, 1)
        else:
            files.write_file(folder / "out.json", b"{}")
    if what == "eval-part":
        (victim.parent / "rank0.jsonl").unlink()
    _outside_untouched(victim)
    assert not os.path.lexists(folder / (TMP + "planted"))  # a link named like a temporary is removed, never followed


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- real kills ---------------------------------------------------------------------------------------

def test_sigkill_while_writing_a_file_then_the_next_write(tmp_path):
    dest = tmp_path / "f" / "out.json"
    files.write_file(dest, b"v1")
    proc = child(f"""
        from gnhub import files
        def slow(f):
            f.write(b"half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        files.write_file(Path({str(dest)!r}), slow)
    """)
    wait_line(proc, "writing")
    left = temporaries(dest.parent)
    assert len(left) == 1 and locked(left[0])  # a live temporary: not the next writer's to remove
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert dest.read_bytes() == b"v1" and not locked(left[0])
    files.write_file(dest, b"v2")
    assert dest.read_bytes() == b"v2" and not temporaries(tmp_path)


def test_sigkill_during_a_directory_replace_never_resurrects_the_old_output(tmp_path):
    """A kill after the new output is swapped in but before the old one is removed: the old one
    is debris in a temporary, removed later, never put back (even once the user deleted the output)."""
    dest = tmp_path / "model"
    with new_model_dir(dest) as tmp:
        _model_like(tmp, 1)
    proc = child(f"""
        from gnhub import files
        from gnhub.layout import new_model_dir
        real = files._remove_temp
        def stop(path):
            if (path / "config.json").exists() and json.loads((path / "config.json").read_text())["v"] == 1:
                print("swapped", flush=True)
                time.sleep(60)
            real(path)
        files._remove_temp = stop
        with new_model_dir(Path({str(dest)!r}), True) as tmp:
            (tmp / "config.json").write_text(json.dumps({{"format_version": {FORMAT_VERSION}, "weights_sha256": "",
                                                          "v": 2}}))
            (tmp / "model.safetensors").write_text("2")
    """)
    wait_line(proc, "swapped")
    assert _dir_version(dest) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(dest)  # the user removes the output
    files.sweep(tmp_path)
    assert not dest.exists() and not temporaries(tmp_path)
    with new_model_dir(dest) as tmp:  # and the next write finds nothing in its way
        _model_like(tmp, 3)
    assert _dir_version(dest) == 3


def test_a_killed_predict_leaves_nothing_the_next_predict_trips_on(tmp_path):
    out, img = tmp_path / "out", image(tmp_path / "in")
    predict_files(Stub(1), [img], out)
    proc = child(f"""
        from gnhub import files
        from gnhub.predict import predict_files
        from files_stub import Stub
        real = files.Folder.write
        def write(self, name, data, *a, **k):
            if name == "results.json":
                print("writing", flush=True)
                time.sleep(60)
            return real(self, name, data, *a, **k)
        files.Folder.write = write
        predict_files(Stub(2), [Path({str(img)!r})], Path({str(out)!r}))
    """)
    wait_line(proc, "writing")
    with pytest.raises(GnhubError, match="another gnhub process is writing there"):  # the live one holds it
        predict_files(Stub(9), [img], out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    predict_files(Stub(3), [img], out)
    assert json.loads((out / "results.json").read_text())[0]["score"] == pytest.approx(0.53)
    assert sorted(os.listdir(out)) == sorted([files.LEDGER, "results.json", "x.json", "x.png"])


# -- two processes at one place ---------------------------------------------------------------------

_TWO_DIRS = """
    from gnhub.layout import new_model_dir
    from gnhub import cache, zoo, files
    go = Path({go!r})
    owned = cache._entry_dir(zoo.get({name!r})) if {by_place} else None
    try:
        with new_model_dir(Path({dest!r}), {force}, owned) as tmp:
            for i in range(5):
                (tmp / f"f{{i}}").write_text("{v}")
            (tmp / "config.json").write_text('{{"format_version": {fv}, "weights_sha256": "", "v": {v}}}')
            print("ready", flush=True)
            while not go.exists():
                time.sleep(0.01)
    except files.GnhubError as e:
        print("error:", e)
        sys.exit(1)
"""


@pytest.mark.parametrize("where", ["output", "cache-entry"])
def test_two_processes_into_one_output_dir(tmp_path, where):
    go = tmp_path / "go"
    if where == "output":
        dest, force, by_place = tmp_path / "results", False, False
    else:
        dest, force, by_place = (tmp_path / "cache" / "models" / ZOO_NAME / zoo.get(ZOO_NAME).expected_sha256,
                                 True, True)
    procs = [child(_TWO_DIRS.format(go=str(go), dest=str(dest), force=force, v=v, fv=FORMAT_VERSION, name=ZOO_NAME,
                                    by_place=by_place), GNHUB_CACHE=str(tmp_path / "cache")) for v in (1, 2)]
    for p in procs:
        wait_line(p, "ready")
    go.touch()
    codes = [p.wait(60) for p in procs]
    outs = [p.stdout.read() + p.stderr.read() for p in procs]
    assert all("Traceback" not in o for o in outs), outs
    v = json.loads((dest / "config.json").read_text())["v"]
    assert {(dest / f"f{i}").read_text() for i in range(5)} == {str(v)}  # one run's files, never mixed
    if where == "output":  # exactly one wins; the other says so in one line
        assert sorted(codes) == [0, 1], outs
        assert "already exists" in outs[codes.index(1)]
    else:  # gnhub's by place: both succeed, one after the other
        assert codes == [0, 0], outs
    assert not temporaries(tmp_path)


_HOLD = """
    from gnhub import files
    from gnhub.predict import predict_files
    from files_stub import Stub
    try:
        if {predict}:
            predict_files(Stub({v}, Path({go!r})), [Path({img!r})], Path({dest!r}))
        else:
            with files.Folder(Path({dest!r}), "--work-dir", hold=True) as folder:
                folder.write("checkpoint.safetensors", b"{v}")
                while not Path({go!r}).exists():
                    time.sleep(0.01)
        print("done", flush=True)
    except files.GnhubError as e:
        print("error:", e, flush=True)
        sys.exit(1)
"""


@pytest.mark.parametrize("what", ["predict-out", "work-dir"])
def test_two_processes_into_one_predict_out_or_work_dir(tmp_path, what):
    go, dest, img = tmp_path / "go", tmp_path / "dest", image(tmp_path / "in")
    first = child(_HOLD.format(predict=what == "predict-out", v=1, go=str(go), img=str(img), dest=str(dest)))
    deadline = time.monotonic() + 30
    while not (dest / files.LEDGER).exists() or not locked(dest / files.LEDGER):
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    second = child(_HOLD.format(predict=what == "predict-out", v=2, go=str(go), img=str(img), dest=str(dest)))
    assert second.wait(60) == 1
    assert "another gnhub process is writing there" in second.stdout.read()
    go.touch()
    assert first.wait(60) == 0, first.stderr.read()
    if what == "predict-out":
        assert json.loads((dest / "results.json").read_text())[0]["score"] == pytest.approx(0.51)
    else:
        assert (dest / "checkpoint.safetensors").read_bytes() == b"1"


# -- PID namespaces ---------------------------------------------------------------------------------

def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-Urpf", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="unshare -Urpf (user and PID namespaces) is not allowed here")
def test_a_live_temporary_of_another_pid_namespace_is_never_swept(tmp_path):
    dest = tmp_path / "model"
    code = f"""
        import sys, time
        from pathlib import Path
        from gnhub.layout import new_model_dir
        import os
        with new_model_dir(Path({str(dest)!r})) as tmp:
            print("ready", os.getpid(), flush=True)
            time.sleep(60)
    """
    proc = subprocess.Popen(["unshare", "-Urpf", "--kill-child", sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[:1] == ["ready"], proc.stderr.read() if proc.poll() is not None else line
    assert int(line[1]) < 10  # another PID namespace: its pid means nothing here
    left = temporaries(tmp_path)
    assert len(left) == 1
    files.sweep(tmp_path)
    with files.Folder(tmp_path):  # a writer in the same folder sweeps too
        pass
    assert left[0].is_dir() and locked(left[0])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while locked(left[0]) and time.monotonic() < deadline:  # --kill-child: its child dies with it
        time.sleep(0.05)
    files.sweep(tmp_path)
    assert not temporaries(tmp_path) and not dest.exists()


# -- only files.py removes or renames ---------------------------------------------------------------

def test_no_module_but_files_py_removes_or_renames():
    banned_calls = {("shutil", "rmtree"), ("os", "replace"), ("os", "rename"), ("os", "unlink"), ("os", "remove"),
                    ("os", "rmdir"), ("os", "removedirs"), ("os", "renames"), ("shutil", "move")}
    found = []
    for path in sorted((ROOT / "gnhub").rglob("*.py")) + sorted((ROOT / "converters").rglob("*.py")):
        if path == ROOT / "gnhub" / "files.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and n.module in ("os", "shutil") for a in n.names
                    if (n.module, a.name) in banned_calls}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(f, ast.Name) and f.id in imported:
                found.append(where)
            elif isinstance(f, ast.Attribute):
                if isinstance(f.value, ast.Name) and (f.value.id, f.attr) in banned_calls:
                    found.append(where)
                elif f.attr in ("unlink", "rename", "rmdir"):
                    found.append(where)
                elif f.attr == "replace" and len(node.args) == 1 and not node.keywords:  # Path.replace(target)
                    found.append(where)
    assert found == []


# -- the findings, each failing on the old code -------------------------------------------

def test_a_users_folder_made_during_convert_is_never_replaced(small_source, tmp_path, monkeypatch):
    """Item 1: the check is made again at the moment of the rename; no --force, so one line."""
    from gnhub import convert as convert_module

    dest = tmp_path / "results"
    real = convert_module.write_model_files

    def meanwhile(tmp, *args, **kwargs):
        dest.mkdir()
        (dest / "mine.csv").write_text("a user's results")
        return real(tmp, *args, **kwargs)

    monkeypatch.setattr(convert_module, "write_model_files", meanwhile)
    assert_one_line_error(run("convert", small_source, "-o", dest, "--no-verify"), str(dest), "already exists")
    assert os.listdir(dest) == ["mine.csv"] and (dest / "mine.csv").read_text() == "a user's results"
    assert sorted(os.listdir(tmp_path)) == ["results"]


@pytest.mark.parametrize("renameat2", [True, False])
def test_a_users_folder_made_during_force_convert_over_gnhubs_is_never_replaced(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(files, "_renameat2", None)
    dest = tmp_path / "model"
    with new_model_dir(dest) as tmp:
        _model_like(tmp, 1)
    with pytest.raises(GnhubError, match="is not a gnhub model directory"):
        with new_model_dir(dest, force=True) as tmp:
            _model_like(tmp, 2)
            shutil.rmtree(dest)
            dest.mkdir()
            (dest / "mine.csv").write_text("a user's results")
    assert os.listdir(dest) == ["mine.csv"] and not temporaries(tmp_path)


def test_a_copied_ledger_does_not_make_a_users_file_gnhubs(tmp_path):
    """Item 5: gnhub claims content, not names: a ledger copied beside a user's file claims nothing."""
    out = tmp_path / "out"
    predict_files(Stub(1), [image(tmp_path / "in")], out)
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(out / files.LEDGER, mine / files.LEDGER)
    for name in ("results.json", "x.json", "x.png"):
        (mine / name).write_text(f"the user's own {name}")
    with pytest.raises(GnhubError, match="results.json: not gnhub's"):
        predict_files(Stub(2), [image(tmp_path / "in")], mine)
    with pytest.raises(GnhubError, match="exists and is not a file gnhub wrote"):
        files.write_file(mine / "x.json", b"{}")
    with pytest.raises(GnhubError, match="not a gnhub model directory"):
        with new_model_dir(mine, force=True) as tmp:
            _model_like(tmp, 1)
    assert all((mine / n).read_text() == f"the user's own {n}" for n in ("results.json", "x.json", "x.png"))


def test_finetune_refuses_a_work_dir_with_a_users_own_log(tmp_path):
    """Item 6: a log.jsonl gnhub did not write (another trainer's) is not gnhub's to clear."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "log.jsonl").write_text('{"their": "trainer"}\n')
    with pytest.raises(GnhubError, match="holds files gnhub did not write \\(log.jsonl\\)"):
        loop._check_work_dir(work, False)
    with files.Folder(work, "--work-dir") as folder, pytest.raises(GnhubError, match="is not gnhub's"):
        loop._clear(folder)
    assert (work / "log.jsonl").read_text() == '{"their": "trainer"}\n'
    # gnhub's own log, grown by appends, is gnhub's; the same log edited by the user is not
    (work / "log.jsonl").unlink()
    with files.Folder(work, "--work-dir") as folder:
        loop._append(folder, {"it": 1})
        loop._append(folder, {"it": 2})
    loop._check_work_dir(work, False)
    (work / "log.jsonl").write_text('{"it": 0}\n')
    with pytest.raises(GnhubError, match="holds files gnhub did not write"):
        loop._check_work_dir(work, False)
    with pytest.raises(GnhubError, match="is not a log gnhub wrote"):
        files.append_line(work / "log.jsonl", '{"it": 3}\n', "--work-dir")
    assert (work / "log.jsonl").read_text() == '{"it": 0}\n'


def test_debris_under_a_cache_entry_is_never_served_or_listed(tmp_path, monkeypatch):
    """Item 7: hidden folders under models/NAME/ (temporaries, old gnhub's debris) are no entries."""
    monkeypatch.setenv("GNHUB_CACHE", str(tmp_path / "cache"))
    entry = zoo.get(ZOO_NAME)
    folder = tmp_path / "cache" / "models" / ZOO_NAME
    for name in (TMP + "abc", f".{entry.expected_sha256}.host-12.x.tmp"):
        (folder / name).mkdir(parents=True)
        _model_like(folder / name, 1)
    assert cache.cached(entry) is None
    assert cache.entries() == []
    assert_one_line_error(run("cache", "rm", "nothing-like-it"), "not a zoo model")


@pytest.mark.parametrize("stem", ["results", files.LEDGER[:-len(".jsonl")], TMP + "x", ".gnhub-predict"])
def test_image_names_like_gnhubs_own_never_overwrite_them(tmp_path, stem):
    """Item 5: an image results.png does not write results.json; a temp-like name is renamed."""
    out = tmp_path / "out"
    predict_files(Stub(1), [image(tmp_path / "in", "a.png"), image(tmp_path / "in", f"{stem}.png")], out)
    data = json.loads((out / "results.json").read_text())
    assert len(data) == 2 and {d["image_id"] for d in data} == {"a.png", *(json.loads(
        (out / n).read_text())["image_id"] for n in os.listdir(out) if n.endswith(".json") and n != "results.json"
        and n != "a.json")}
    assert files._parse_ledger((out / files.LEDGER).read_bytes())
    assert not temporaries(out)
    predict_files(Stub(2), [image(tmp_path / "in", "a.png"), image(tmp_path / "in", f"{stem}.png")], out)
    assert len(json.loads((out / "results.json").read_text())) == 2


def test_a_temporary_with_a_huge_pid_like_name_is_no_traceback(tmp_path):
    """Item 3: names are never parsed; anything named like a temporary that nobody locks is debris."""
    (tmp_path / f"{TMP}x.host-{2**40}.tmp").write_text("debris")
    (tmp_path / f".out.json.host-{2**40}.tmp").write_text("an old gnhub's name: not ours to judge")
    files.write_file(tmp_path / "out.json", b"{}")
    assert sorted(os.listdir(tmp_path)) == sorted([f".out.json.host-{2**40}.tmp", files.LEDGER, "out.json"])

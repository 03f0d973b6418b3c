"""Publishing and loading by name through huggingface_hub, against a real HTTP server on localhost."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REFERENCE_THREADS, ROOT
from hub_server import serve
from huggingface_hub import ModelCard

from gnhub import load, zoo
from gnhub.cards import render_card
from gnhub.convert import convert
from gnhub.samples import sample_images

TOKEN = "hf_test_token_0123456789abcdef"
NAME = "mask_rcnn_r50_fpn_gn-all_2x_coco"


@pytest.fixture(scope="module")
def zoo_named_dir(small_source, session_dir):
    """A verified conversion carrying a zoo name, so its card has the zoo's published results."""
    out = session_dir("zoo") / NAME
    threads = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)  # its golden outputs are checked by `gnhub` processes (2 threads)
    try:
        convert(small_source, out, name=NAME)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture()
def server(tmp_path):
    srv, hub = serve(tmp_path / "server", TOKEN)
    yield f"http://127.0.0.1:{srv.server_address[1]}", hub, srv
    srv.shutdown()


def hub_env(tmp_path, endpoint, token=True, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GNHUB_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS=str(REFERENCE_THREADS), **extra)  # as reference_threads
    if token:
        env["HF_TOKEN"] = TOKEN
    return env


def gnhub_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "gnhub", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def predict_in_subprocess(env, name, out):
    """`gnhub.load(name).predict(sample)` in a fresh process; results saved to `out`."""
    code = textwrap.dedent(f"""
        import torch, gnhub
        from gnhub.samples import sample_images
        torch.save(gnhub.load({name!r}).predict(sample_images()[2]), {str(out)!r})
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_card_is_valid_hugging_face_metadata(zoo_named_dir):
    card = ModelCard(render_card(zoo_named_dir))
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "gnhub"
    assert data.pipeline_tag == "image-segmentation" and "group-normalization" in data.tags
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {"box AP": 40.2, "mask AP": 36.4}
    for section in ("## Results", "## How to use", "## Preprocessing and classes", "## Provenance",
                    "## Verification", "## Limitations", "## Citation"):
        assert section in card.text
    assert "**passed**" in card.text and "wu2018group" in card.text and "mmdetection" in card.text


def test_checked_in_example_cards_are_valid():
    examples = [p for p in sorted((ROOT / "model_cards" / "examples").glob("*.md")) if p.name != "README.md"]
    assert examples, "model_cards/examples/ holds one rendered card per source family"
    for path in examples:
        assert ModelCard(path.read_text()).data.library_name == "gnhub"


def test_publish_then_load_by_name(zoo_named_dir, server, tmp_path, reference_threads):
    endpoint, hub, srv = server
    env = hub_env(tmp_path, endpoint)
    repo = f"gnhub/{NAME}"
    proc = gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", repo)
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and hub.repos[repo].commits == 1
    head = hub.repos[repo].branches["main"]
    assert sorted(hub.repos[repo].trees[head]) == [
        "README.md", "config.json", "golden.safetensors", "model.safetensors", "verification.json"]
    assert hub.repos[repo].trees[head]["model.safetensors"]["lfs"]

    # republishing the same directory makes no commit
    proc = gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", repo)
    assert proc.returncode == 0, proc.stderr
    assert "unchanged, no new commit" in proc.stdout and hub.repos[repo].commits == 1

    # load by zoo name in a fresh process: the same outputs as the local directory
    proc = predict_in_subprocess(env, NAME, tmp_path / "remote.pt")
    assert proc.returncode == 0, proc.stderr
    remote, local = torch.load(tmp_path / "remote.pt"), load(zoo_named_dir).predict(sample_images()[2])
    assert len(local["boxes"]) > 0
    for k in local:
        assert torch.equal(remote[k], local[k]), k

    # golden outputs came along: verify works on the downloaded model
    proc = gnhub_cli(env, "verify", f"hf-hub:{repo}")
    assert proc.returncode == 0 and "against golden outputs" in proc.stdout, proc.stderr
    # offline, from the cache, with the server gone
    srv.shutdown()
    proc = predict_in_subprocess({**env, "HF_HUB_OFFLINE": "1"}, NAME, tmp_path / "offline.pt")
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "offline.pt")["boxes"], local["boxes"])
    # offline and never downloaded: one clear error
    proc = predict_in_subprocess({**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty")}, NAME,
                                 tmp_path / "x.pt")
    assert proc.returncode != 0 and "not in the local cache" in proc.stderr


def test_corrupted_download_is_refused(zoo_named_dir, server, tmp_path):
    endpoint, hub, _ = server
    env = hub_env(tmp_path, endpoint)
    repo = f"gnhub/{NAME}"
    assert gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", repo).returncode == 0
    entry = hub.repos[repo].trees[hub.repos[repo].branches["main"]]["model.safetensors"]
    blob = hub.root / "objects" / entry["sha256"]
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = gnhub_cli(env, "predict", sample_images()[3], "--model", NAME, "--out", tmp_path / "p")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "sha256" in proc.stderr.splitlines()[-1]


def test_unknown_name_suggests_close_ones(tmp_path, server):
    endpoint, _, _ = server
    proc = gnhub_cli(hub_env(tmp_path, endpoint), "predict", sample_images()[3], "--model",
                     "mask_rcnn_r50_fpn_gn-al_2x_coco")
    assert proc.returncode == 1
    assert "did you mean mask_rcnn_r50_fpn_gn-all_2x_coco" in proc.stderr


def test_private_repo_needs_the_token_and_the_token_never_shows(zoo_named_dir, server, tmp_path):
    endpoint, hub, _ = server
    env = hub_env(tmp_path, endpoint)
    proc = gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", "lab/private-gn", "--private")
    assert proc.returncode == 0, proc.stderr
    assert hub.repos["lab/private-gn"].private
    no_token = hub_env(tmp_path, endpoint, token=False)
    proc = predict_in_subprocess(no_token, "hf-hub:lab/private-gn", tmp_path / "x.pt")
    assert proc.returncode != 0 and "private and no valid token" in proc.stderr
    proc = predict_in_subprocess(env, "hf-hub:lab/private-gn@main", tmp_path / "y.pt")
    assert proc.returncode == 0, proc.stderr
    # the token appears in no output and no published file
    outputs = [proc.stdout, proc.stderr] + [p.read_text(errors="ignore") for p in zoo_named_dir.iterdir()
                                            if p.suffix in (".json", ".md")]
    outputs += [(hub.root / "objects" / f).read_bytes().decode(errors="ignore")
                for f in os.listdir(hub.root / "objects")]
    assert not any(TOKEN in text for text in outputs)


def test_publish_to_a_branch_and_as_pull_request(zoo_named_dir, server, tmp_path):
    endpoint, hub, _ = server
    env = hub_env(tmp_path, endpoint)
    assert gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", "lab/m", "--revision", "v1").returncode == 0
    assert len(hub.repos["lab/m"].trees[hub.repos["lab/m"].branches["v1"]]) == 5
    assert hub.repos["lab/m"].trees[hub.repos["lab/m"].branches["main"]] == {}
    proc = gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", "lab/m", "--create-pr")
    assert proc.returncode == 0 and "/discussions/1" in proc.stdout


def test_publish_refuses_unverified_and_dry_run_uploads_nothing(small_source, server, tmp_path):
    endpoint, hub, _ = server
    env = hub_env(tmp_path, endpoint)
    convert(small_source, tmp_path / "unverified", verify=False)
    proc = gnhub_cli(env, "publish", tmp_path / "unverified", "--repo-id", "lab/u")
    assert proc.returncode == 1 and "--allow-unverified" in proc.stderr
    proc = gnhub_cli(env, "publish", tmp_path / "unverified", "--repo-id", "lab/u", "--allow-unverified",
                     "--dry-run")
    assert proc.returncode == 0 and "would publish" in proc.stdout and not hub.repos


def test_directory_hub_and_torch_hub(zoo_named_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GNHUB_")}
    hub_dir = tmp_path / "hubdir"
    proc = gnhub_cli(env, "publish", zoo_named_dir, "--repo-id", f"gnhub/{NAME}", "--hub-dir", hub_dir)
    assert proc.returncode == 0, proc.stderr
    assert (hub_dir / "gnhub" / NAME / "README.md").is_file()
    model = torch.hub.load(str(ROOT), NAME.replace("-", "_"), source="local", hub_dir=str(hub_dir))
    assert json.loads((hub_dir / "gnhub" / NAME / "config.json").read_text())["name"] == model.config.name
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    spec.loader.exec_module(hubconf := importlib.util.module_from_spec(spec))
    entries = [k for k, v in vars(hubconf).items() if callable(v) and not k.startswith("_")]
    assert len(entries) == len(zoo.MODELS) and all(e.isidentifier() for e in entries)  # one per zoo model
    assert hubconf.faster_rcnn_x50_32x4d_fpn_gn_ws_all_1x_coco.__doc__.startswith(
        "Faster R-CNN, ResNeXt-50 32x4d-FPN with GroupNorm and Weight Standardization")


def test_publish_zoo_continues_past_a_failing_model(small_source, tmp_path):
    from gnhub.zoo import MODELS

    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / MODELS[NAME].file).write_bytes(small_source.read_bytes())  # a stand-in, re-saved weights
    (folder / MODELS["mask_rcnn_r101_fpn_gn-all_3x_coco"].file).write_bytes(b"truncated download")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GNHUB_")}
    proc = gnhub_cli(env, "publish-zoo", folder, "--hub-dir", tmp_path / "hub", "--work-dir", tmp_path / "work",
                     "--no-check-hash")
    assert proc.returncode == 1 and "1 of 2 models failed" in proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()}
    assert rows == {NAME: "published", "mask_rcnn_r101_fpn_gn-all_3x_coco": "FAILED"}
    assert load(NAME, hub_dir=str(tmp_path / "hub")).config.name == NAME

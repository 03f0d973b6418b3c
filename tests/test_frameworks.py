"""A framework's convention is one object chosen by config.json's `convention`: its numpy twins equal
its torch originals, the model's stages compare no framework names, a reference forward imports
nothing of the model, and format_version 1's six convention fields still load."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gnhub
from gnhub import frameworks
from gnhub.config import ModelConfig
from gnhub.errors import GnhubError
from gnhub.images import load_image
from gnhub.layout import CONFIG_FILE, is_current, read_config
from gnhub.modeling.transform import Preprocessor
from gnhub.runtime import network_input
from gnhub.samples import sample_images

PACKAGE = Path(gnhub.__file__).parent
EXPORTED = [n for n in frameworks.NAMES if frameworks.info(n).EXPORTS]


def _imports(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] if node.level else ())
            module = ".".join(p for p in (base, node.module or "") if p)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_a_reference_forward_never_imports_the_model():
    files = sorted((PACKAGE / "reference").glob("*.py"))
    assert len(files) >= 4
    for path in files:
        model = [n for n in _imports(path) if n == "gnhub.modeling" or n.startswith("gnhub.modeling.")]
        assert not model, f"{path.name} imports {model}: a reference must stay independent of the model"


def test_no_stage_names_a_framework():
    for path in sorted((PACKAGE / "modeling").glob("*.py")):
        names = [node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Constant) and node.value in frameworks.NAMES]
        assert not names, f"{path.name} names {names}: a stage asks its convention object instead"


def test_the_torch_free_half_imports_no_torch():
    code = ("import sys, gnhub.frameworks as f, gnhub.runtime\n"
            "[(f.info(n), f.arrays(n)) for n in f.NAMES]\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", frameworks.NAMES)
def test_the_runtime_preprocesses_as_the_model(name):
    config = ModelConfig(convention=name)
    config.preprocess.max_size = (320, 192)
    model = Preprocessor(config.preprocess, frameworks.convention(name).rescale)
    for path in sample_images():
        rgb = load_image(path)
        x, size, factor = network_input(rgb, config)
        batch = model([rgb])
        assert np.array_equal(x, batch.tensor.numpy()), path.name
        assert size.tolist() == list(batch.image_sizes[0])
        assert np.array_equal(factor, np.asarray(batch.scale_factors[0], np.float32))


def _detections(n: int = 80):
    """Boxes in a 192x288 network image: random, some empty, some partly or wholly outside."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 300 - 20
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 150 + 0.2], 1)
    boxes[:3, 2] = boxes[:3, 0]  # empty
    boxes[3] = torch.tensor([-20.0, -10.0, 5.0, 8.0])
    boxes[4] = torch.tensor([300.0, 200.0, 320.0, 230.0])  # outside: empty once clipped
    return torch.rand(n, 28, 28, generator=g), boxes


@pytest.mark.parametrize("name", EXPORTED)
def test_numpy_postprocess_equals_the_conventions(name):
    _, boxes = _detections()
    got, keep = frameworks.arrays(name).postprocess(boxes.numpy(), (192, 288), (427, 640))
    want, want_keep = frameworks.convention(name).postprocess(boxes, (192, 288), (427, 640))
    assert np.array_equal(got, want.numpy())
    assert (keep is None and want_keep is None) or np.array_equal(keep, want_keep.numpy())


@pytest.mark.parametrize("name", EXPORTED)
def test_numpy_mask_pasting_equals_the_conventions(name):
    probs, boxes = _detections()
    got = frameworks.arrays(name).paste_masks(probs.numpy(), boxes.numpy(), 300, 400, 0.5)
    want = frameworks.convention(name).paste_masks(probs, boxes, 300, 400, 0.5)
    assert got.any() and np.array_equal(got, want.numpy())


LEGACY = {  # format_version 1's six fields as each framework's converter wrote them
    "mmdet": ("mmdet", "mmcv", "mmdet", "image", "network", "mmdet"),
    "detectron": ("detectron", "detectron", "detectron", "padded", "original", "detectron"),
    "detectron2": ("detectron2", "pil", "detectron2", "image", "network", "mmdet"),
}


def _version_1(config: ModelConfig, values) -> dict:
    data = config.to_dict()
    del data["convention"]
    data["format_version"] = 1
    for path, value in zip(("box_convention", "preprocess.resize", "rpn.anchor_generator", "rpn.clip_to",
                            "roi_heads.detect_in", "roi_heads.paste"), values):
        *section, field = path.split(".")
        (data[section[0]] if section else data)[field] = value
    return data


@pytest.mark.parametrize("name", sorted(LEGACY))  # the frameworks format_version 1 knew
def test_format_version_1_conventions_read_as_one(tmp_path, name):
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_version_1(ModelConfig(), LEGACY[name])))
    config = read_config(tmp_path)
    assert (config.convention, config.format_version) == (name, 2) and is_current(tmp_path)
    classifier = _version_1(ModelConfig(task="image-classification"), ("mmdet", LEGACY[name][1]))
    assert ModelConfig.from_dict(classifier).convention == name  # a classifier wrote only its resize
    mixed = _version_1(ModelConfig(), LEGACY[name][:5] + ("detectron" if name != "detectron" else "mmdet",))
    with pytest.raises(GnhubError, match="format_version 1 conventions .* are no framework's; convert the model again"):
        ModelConfig.from_dict(mixed)


def test_a_format_version_1_model_directory_loads_and_predicts_the_same(small_model, tmp_path):
    path = small_model.save_pretrained(tmp_path / "m")
    config = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps(_version_1(ModelConfig.from_dict(config), LEGACY["mmdet"])))
    old = gnhub.load(path)
    image = sample_images()[3]
    got, want = old.predict(image), small_model.predict(image)
    assert old.config.convention == "mmdet" and len(want["boxes"])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_mmdet_box_only_detections_reach_nms_in_original_pixels(monkeypatch):
    """mmdetection's StandardRoIHead rescales a detector's boxes before NMS when it has no mask head
    (BBoxHead: times float32(1 / scale factor)); with a mask head NMS runs in the network's pixels."""
    from gnhub.config import RoIHeadsConfig
    from gnhub.frameworks.mmdet import convention as mmdet

    seen = []
    real = mmdet.batched_nms
    monkeypatch.setattr(mmdet, "batched_nms", lambda boxes, *a: seen.append(boxes.clone()) or real(boxes, *a))
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(64, 2, generator=g) * torch.tensor([900.0, 700.0])
    proposals = torch.cat([corners, corners + 5 + torch.rand(64, 2, generator=g) * 90], 1)
    n, k = len(proposals), 3
    scores = torch.rand(n * k, generator=g)
    labels = torch.arange(k).repeat(n)
    factors, size = (1000 / 333, 800 / 267), (800, 1000)  # (w, h) resized / original; the network's (h, w)
    args = (proposals.repeat_interleave(k, 0), torch.zeros(n * k, 4), scores, labels, n, k, size,
            RoIHeadsConfig(detections_per_image=1000, nms_iou=1.0))
    boxes, _, _ = mmdet.CONVENTION.detect(*args, factors=factors)
    network = mmdet.decode_boxes(args[0], args[1], (0.1, 0.1, 0.2, 0.2), size)
    scaled = network * torch.tensor([1 / factors[0], 1 / factors[1]]).repeat(2)
    assert torch.equal(seen[0], scaled[scores > 0.05]) and float(seen[0].max()) <= 333.0
    assert not torch.equal(scaled, network / torch.tensor(factors).repeat(2))  # times the reciprocal, not divided
    assert boxes.shape[0] == (scores > 0.05).sum()
    mmdet.CONVENTION.detect(*args)
    assert torch.equal(seen[1], network[scores > 0.05])

"""Writes tests/data/real_runs, the compact references of the team's real framework runs, from the
full runs in ../shared/fixtures (59 MB of stage dumps -> about 1.5 MB that ship with the tests).

    python scripts/refresh_real_runs.py [--shared DIR] [--check]

For each case: its key list, meta.json and source.txt as they are, and one .npz (written byte for
byte the same each time) holding every array of the run through tests/references.compact (small
ones in full, large ones as samples and slice statistics). The images are not stored: the
run's generator makes them again, so the .npz holds their seed and sha256, and the sha256 of the
framework's resized image. `weights_sha256` is the hash of the run's weights, made by ../shared's
own generator, which the tests' port must reproduce. --check writes nothing and exits 1 if a
vendored file differs from what ../shared gives.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from detweights import weights_digest  # noqa: E402
from references import REAL_RUNS, compact, sha256  # noqa: E402

# case -> the seeds of make_image that made its images (the mmdetection cases' meta.json does not say)
INFERENCE = {"mmdet_r50_gn_2x_seed0": 0, "mmdet_x50_gn_ws_2x_seed30": 31, "d2_mask_rcnn_R_50_FPN_3x_gn_seed20": 21}
TRAIN = ("mmdet_r50_gn_2x_seed0_train", (0, 1))
TEXT = ("keys.txt", "meta.json", "source.txt")
KEY_LISTS = ("mmdet_mask-rcnn_r101_fpn_gn-all.txt",)  # a key list the tests use without a run


def _module(path: Path):
    spec = importlib.util.spec_from_file_location("shared_detweights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz numpy reads, the same bytes for the same arrays (sorted, no time stamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for key in sorted(arrays):
            array = io.BytesIO()
            np.lib.format.write_array(array, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, array.getvalue())
    return buf.getvalue()


def _image(out: dict, rgb: np.ndarray, seed: int, make_image, prefix: str) -> None:
    if not np.array_equal(rgb, make_image(*rgb.shape[:2], seed)):
        raise SystemExit(f"{prefix}: not make_image({rgb.shape[0]}, {rgb.shape[1]}, {seed}); fix the seed table")
    out.update({f"{prefix}_seed": np.array(seed), f"{prefix}_shape": np.array(rgb.shape),
                f"{prefix}_sha256": np.array(sha256(rgb))})


def _weights(case: Path, gen) -> np.ndarray:
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    seed = meta["seed"] if "detectron2_version" in meta else int(
        re.fullmatch(r".+_seed(\d+)-[0-9a-f]{8}\.pth", (case / "source.txt").read_text().strip())[1])
    return np.array(weights_digest(gen.make_arrays(gen.read_key_list(str(case / "keys.txt")), seed)))


def inference_case(case: Path, seed: int, gen) -> dict[str, np.ndarray]:
    with np.load(case / "outputs.npz", allow_pickle=False) as z:
        run = dict(z)
    out = {"weights_sha256": _weights(case, gen)}
    _image(out, run.pop("image_rgb"), seed, gen.make_image, "image")
    resized = run.pop("resized_network_order")
    out.update(resized_shape=np.array(resized.shape), resized_sha256=np.array(sha256(resized)))
    for key, a in run.items():
        out.update(compact(key, a))
    return out


def train_case(case: Path, seeds, gen) -> dict[str, np.ndarray]:
    out = {"weights_sha256": _weights(case, gen)}
    with np.load(case / "train_inputs.npz", allow_pickle=False) as z:
        run = dict(z)
    for i, seed in enumerate(seeds):
        _image(out, run.pop(f"image_{i}"), seed, gen.make_image, f"image_{i}")
    with np.load(case / "train_outputs.npz", allow_pickle=False) as z:
        run.update(z)
    for key, a in run.items():
        out.update(compact(key, a))
    return out


def vendored(shared: Path) -> dict[Path, bytes]:
    """Every vendored file (relative to REAL_RUNS) and its bytes."""
    gen = _module(shared / "detweights.py")
    files = {}
    for name, make in [*((n, lambda c, s=s: inference_case(c, s, gen)) for n, s in INFERENCE.items()),
                       (TRAIN[0], lambda c: train_case(c, TRAIN[1], gen))]:
        for text in TEXT:
            files[Path(name) / text] = (shared / name / text).read_bytes()
        files[Path(name) / "reference.npz"] = npz_bytes(make(shared / name))
    for key_list in KEY_LISTS:
        files[Path("keys") / key_list] = (shared / "keys" / key_list).read_bytes()
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "fixtures")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a vendored file differs")
    args = ap.parse_args()
    if not (args.shared / "detweights.py").is_file():
        raise SystemExit(f"{args.shared}: not the team's fixtures folder (no detweights.py); pass --shared")
    files = vendored(args.shared)
    stale = [p for p, data in files.items() if not (REAL_RUNS / p).is_file() or (REAL_RUNS / p).read_bytes() != data]
    extra = sorted(str(p.relative_to(REAL_RUNS)) for p in REAL_RUNS.rglob("*")
                   if p.is_file() and p.name != "README.md" and p.relative_to(REAL_RUNS) not in files)
    if args.check:
        for p in stale:
            print(f"differs: {p}")
        for p in extra:
            print(f"not from ../shared: {p}")
        raise SystemExit(1 if stale or extra else 0)
    for p in stale:
        (REAL_RUNS / p).parent.mkdir(parents=True, exist_ok=True)
        (REAL_RUNS / p).write_bytes(files[p])
    for p in extra:
        print(f"left alone (not from ../shared): {p}")
    total = sum(len(d) for d in files.values())
    print(f"{len(stale)} of {len(files)} files written; {total / 2**20:.2f} MiB in {REAL_RUNS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

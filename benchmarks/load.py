"""Loading a converted R-50 model, against the bare minimum: `safetensors.torch.load_file` of the
same weights + building the model on the meta device with them. Each measurement is a fresh
process (imports done before the clock starts), alternating, median of N:

    python benchmarks/load.py [--runs 5]

  bare       load_file + with_weights (no hash check)
  directory  gnhub.load(DIR): config checked, weights' sha256 checked (hashed once per file version)
  cache      gnhub.load(NAME) of a zoo-style name from gnhub's cache, HF_HUB_OFFLINE=1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the real runs' generator and key lists

_CHILD = r"""
import sys, time
mode, target = sys.argv[1:3]
import gnhub
from gnhub.layout import check_model_dir
from gnhub.modeling import with_weights
from safetensors.torch import load_file
load = gnhub.load  # the lazily imported gnhub.api too, before the clock
start = time.perf_counter()
if mode == "bare":
    with_weights(check_model_dir(target, check_hash=False), load_file(target + "/model.safetensors"), "bare")
else:
    load(target)
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import detweights

    from gnhub.convert import convert
    from gnhub.files import sha256_file

    scratch = tempfile.TemporaryDirectory()  # removed at exit
    work = Path(scratch.name)
    src = Path(detweights.build_checkpoint(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0", work))
    model_dir = work / "r50"
    convert(src, model_dir, verify=False)
    sha = sha256_file(src)
    cached = work / "cache" / "models" / "bench_r50" / sha
    convert(src, cached, name="bench_r50", verify=False)
    (work / "zoo.json").write_text(json.dumps([{"name": "bench_r50", "url": "https://example.org/r50.pth",
                                                 "sha256": sha}]))
    env = {**os.environ, "GNHUB_CACHE": str(work / "cache"), "GNHUB_ZOO_FILE": str(work / "zoo.json"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    time.sleep(2.1)  # files just written are always hashed; a second load of an older file is not
    modes = {"bare": str(model_dir), "directory": str(model_dir), "cache": "bench_r50"}
    for target in (str(model_dir), "bench_r50"):  # first loads: hash and remember
        subprocess.run([sys.executable, "-c", _CHILD, "directory", target], check=True, env=env, capture_output=True)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode, target in modes.items():
            out = subprocess.run([sys.executable, "-c", _CHILD, mode, target], check=True, env=env,
                                 capture_output=True, text=True).stdout
            times[mode].append(float(out.strip().splitlines()[-1]))
    base = statistics.median(times["bare"])
    weights = model_dir / "model.safetensors"
    print(f"R-50, {weights} ({weights.stat().st_size / 2**20:.0f} MiB)")
    for mode, ts in times.items():
        m = statistics.median(ts)
        print(f"{mode:10s} {m:7.3f} s  {m / base:5.2f}x bare   (goals: directory <= 1.15x, cache <= 1.3x)")


if __name__ == "__main__":
    main()

"""Conversion and verification, as processes a user runs, against their baselines in one run:

    python benchmarks/convert.py [--runs 5] [--legacy] [--threads 2]

- `gnhub convert SRC --no-verify` (the whole process) against the bare minimum process:
  `import torch`, `torch.load(weights_only=True)` of SRC, `safetensors.torch.save_file`
  (target <= 1.1x);
- the verification inside `gnhub convert SRC` (from its start to the written report) against
  gnhub's own predict of the four built-in images in a fresh process (load, then one
  `predict` call): verification needs two such forwards, the model's and the source's
  (target <= 2.1x).

The checkpoint is a real-size R-50 built from the tests' key list (tests/data/real_runs) with deterministic
weights. The kinds alternate, one fresh process each, median of --runs; peak memory is each
process's VmHWM.
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

_PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
_MINIMUM = """
import sys
import torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["state_dict"]
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])
""" + _PEAK + "print(peak_mb())"
_CONVERT = """
import sys, time
from gnhub.__main__ import run
sys.argv = ["gnhub", "convert", *sys.argv[1:]]
try:
    run()
except SystemExit as e:
    assert not e.code
""" + _PEAK + "print(peak_mb())"
_VERIFY = """
import json, sys, time
from gnhub.convert import convert
marks = {}
mark = lambda msg: msg.startswith("verifying") and marks.setdefault("verify", time.perf_counter())
convert(sys.argv[1], sys.argv[2], log=mark)
""" + _PEAK + "print(json.dumps({'seconds': time.perf_counter() - marks['verify'], 'peak': peak_mb()}))"
_PREDICT = """
import json, sys, time
import gnhub
from gnhub.samples import sample_images
model = gnhub.load(sys.argv[1])
start = time.perf_counter()
model.predict(sample_images())
""" + _PEAK + "print(json.dumps({'seconds': time.perf_counter() - start, 'peak': peak_mb()}))"


def child(code: str, *args, env=None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--legacy", action="store_true", help="pre-1.6 serialization, as the 2020 zoo files")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(TESTS))
    import detweights
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows: dict[str, list] = {k: [] for k in ("minimum", "convert", "verify", "predict")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        entries = detweights.read_key_list(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0" / "keys.txt")
        src = tmp / "r50.pth"
        torch.save({"meta": {}, "state_dict": detweights.make_state_dict(entries, 0)}, src,
                   _use_new_zipfile_serialization=not args.legacy)
        size = src.stat().st_size
        for i in range(args.runs):
            s, peak = child(_MINIMUM, src, tmp / f"min{i}.safetensors", env=env)
            rows["minimum"].append({"seconds": s, "peak": float(peak)})
            s, peak = child(_CONVERT, src, "-o", tmp / f"c{i}", "--no-verify", "--json", env=env)
            rows["convert"].append({"seconds": s, "peak": float(peak)})
            rows["verify"].append(json.loads(child(_VERIFY, src, tmp / f"v{i}", env=env)[1]))
            rows["predict"].append(json.loads(child(_PREDICT, tmp / f"v{i}", env=env)[1]))
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("seconds", "peak")} for k, v in rows.items()}
    kind = "legacy" if args.legacy else "zip"
    print(f"R-50 {kind} checkpoint {size / 2**20:.0f} MiB, {args.threads} threads, median of {args.runs} "
          "alternating fresh processes")
    print(f"  {'':44s} {'seconds':>8s} {'peak MiB':>9s}")
    labels = {"minimum": "bare minimum process (load + save_file)", "convert": "gnhub convert --no-verify process",
              "verify": "verification inside gnhub convert", "predict": "gnhub predict of the 4 built-in images"}
    for k, label in labels.items():
        print(f"  {label:44s} {med[k]['seconds']:8.2f} {med[k]['peak']:9.0f}")
    print(f"  convert --no-verify / minimum : {med['convert']['seconds'] / med['minimum']['seconds']:.2f}x "
          "(target <= 1.1x)")
    print(f"  verification / predict        : {med['verify']['seconds'] / med['predict']['seconds']:.2f}x "
          "(target <= 2.1x)")
    print(f"  convert --no-verify peak memory / minimum's: {med['convert']['peak'] / med['minimum']['peak']:.2f}x")


if __name__ == "__main__":
    main()

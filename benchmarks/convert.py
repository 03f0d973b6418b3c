"""Conversion time and peak memory vs the bare minimum, on a real-size R-50 mmdetection checkpoint.

    python benchmarks/convert.py [--runs 3] [--legacy]

The checkpoint is built from ../shared/fixtures' key list with deterministic weights. The bare
minimum is `torch.load(weights_only=True)` of the source + `safetensors.torch.save_file` of the
same tensors. Each measurement runs in a fresh process; peak memory is that process's peak
resident set above its resident set after imports.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"

_CHILD = r"""
import json, sys, time
import torch
from safetensors.torch import save_file
import gnhub.convert

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

mode, src, out = sys.argv[1:4]
base = rss("VmRSS:")
start = time.perf_counter()
if mode == "minimum":
    sd = torch.load(src, map_location="cpu", weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, out)
else:
    gnhub.convert.convert(src, out, verify=False)  # conversion alone; verification is timed apart
print(json.dumps({"seconds": time.perf_counter() - start, "peak": rss("VmHWM:") - base}))
"""


def measure(mode: str, src: Path, tmp: Path, i: int) -> dict:
    out = tmp / f"{mode}{i}"
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(src), str(out)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--legacy", action="store_true", help="pre-1.6 serialization, as the 2020 zoo files")
    args = ap.parse_args()
    sys.path.insert(0, str(SHARED))
    import detweights
    import torch

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        entries = detweights.read_key_list(str(SHARED / "keys" / "mmdet_mask-rcnn_r50_fpn_gn-all.txt"))
        src = tmp / "r50.pth"
        sd = detweights.make_state_dict(entries, 0)
        torch.save({"meta": {}, "state_dict": sd}, src, _use_new_zipfile_serialization=not args.legacy)
        size = src.stat().st_size
        rows = {m: [measure(m, src, tmp, i) for i in range(args.runs)] for m in ("minimum", "gnhub")}
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak")} for m, rs in rows.items()}
    kind = "legacy" if args.legacy else "zip"
    print(f"R-50 {kind} checkpoint {size / 2**20:.1f} MiB, median of {args.runs} runs, fresh process each")
    for m in ("minimum", "gnhub"):
        print(f"{m:8s}: {med[m]['seconds']:6.2f} s, peak memory {med[m]['peak'] / 2**20:7.1f} MiB")
    ratio = med["gnhub"]["seconds"] / med["minimum"]["seconds"]
    print(f"time ratio gnhub / minimum      : {ratio:.2f}x (target <= 1.3x)")
    print(f"peak memory / checkpoint size   : {med['gnhub']['peak'] / size:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()

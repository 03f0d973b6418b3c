"""Start-up cost of the `gnhub` commands that run no model, as process wall times against a bare
`python -c "import click"` process, alternating, median of N.

    python benchmarks/startup.py [--runs 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "import click (baseline)": ["-c", "import click"],
    "gnhub --help": ["-m", "gnhub", "--help"],
    "gnhub --version": ["-m", "gnhub", "--version"],
    "gnhub convert --help": ["-m", "gnhub", "convert", "--help"],
    "gnhub list": ["-m", "gnhub", "list"],
    "gnhub info NAME": ["-m", "gnhub", "info", "mask_rcnn_r50_fpn_gn-all_2x_coco"],
    "import gnhub": ["-c", "import gnhub"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()  # removed at exit
    env = {**os.environ, "GNHUB_CACHE": scratch.name}
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():  # alternating, so load drifts hit all alike
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["import click (baseline)"])
    print(f"{'command':28s} {'median s':>9s} {'x click':>8s}  (goal: <= 2.0x)")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:28s} {m:9.3f} {m / base:7.2f}x")


if __name__ == "__main__":
    main()

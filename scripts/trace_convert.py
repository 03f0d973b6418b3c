"""Follows a `gnhub convert` through gnhub's modules (issue 28 item 3) and counts two things:

* returns: the modules the conversion engine (any function of gnhub/convert.py) hands its input
  to, in order (consecutive calls into one module counted once); a return is a module in that
  sequence that was already handed the input before, and left for another one
  (source -> converters -> ... -> source again is one return);
* call-backs: calls from module B into module A while A is still on the call stack below B
  (a callback, or a lower module reaching up), each distinct stack path once.

    python scripts/trace_convert.py [--keep DIR]

The input is the tests' reference case (tests/data/real_runs/mmdet_r50_gn_2x_seed0) rebuilt as
mmdetection publishes it, with the tests' fast settings (images fit 320x192), converted with
verification by `gnhub convert SRC -o OUT` (gnhub.cli.main) in this process. sys.setprofile sees
every Python call of the main thread; a frame's module is its globals' __name__ (a method or
property counts for the module that defines it), frames outside gnhub (torch, click, the standard
library) are transparent, and module bodies run by an import are left out (loading code is not
following the input). About a minute and a half on 2 cores.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def small_source(folder: Path) -> Path:
    import torch
    from conftest import REFERENCE_CASE, case_checkpoint, mmdet_checkpoint

    full = case_checkpoint(REFERENCE_CASE, folder / "full")
    state = torch.load(full, weights_only=True)["state_dict"]
    shutil.rmtree(folder / "full")
    return mmdet_checkpoint(folder / "small_r50.pth", state)


class Tracer:
    ENGINE = "gnhub.convert"

    def __init__(self):
        self.stack: list[str | None] = []  # one entry per Python frame: its gnhub module, or None
        self.importing = 0  # module bodies on the stack
        self.callbacks: Counter = Counter()
        self.handed: list[str] = []  # "module.function" the engine calls, in order

    def __call__(self, frame, event, arg):
        if event == "call":
            body = frame.f_code.co_name == "<module>"
            name = frame.f_globals.get("__name__", "")
            unit = "<module>" if body else name if name.startswith("gnhub") else None
            if body:
                self.importing += 1
            elif unit and not self.importing:
                below = [m for m in self.stack if m and m != "<module>"]
                if below and below[-1] != unit:
                    if below[-1] == self.ENGINE:
                        self.handed.append(f"{unit}.{frame.f_code.co_name}")
                    if unit in below:
                        last = max(i for i, m in enumerate(below) if m == unit)
                        self.callbacks[" -> ".join(_collapse(below[last:] + [unit]))] += 1
            self.stack.append(unit)
        elif event == "return" and self.stack:
            if self.stack.pop() == "<module>":
                self.importing -= 1


def _collapse(names):
    out = []
    for m in names:
        m = m.removeprefix("gnhub.")
        if not out or out[-1] != m:
            out.append(m)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the source and write the model here (default: a temp dir)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gnhub-trace-"))
    try:
        src = small_source(folder)
        from gnhub.cli import main as gnhub_main

        tracer = Tracer()
        sys.argv = ["gnhub", "convert", str(src), "-o", str(folder / "out"), "--force"]
        sys.setprofile(tracer)
        try:
            gnhub_main()
        except SystemExit as e:
            if e.code:
                raise
        finally:
            sys.setprofile(None)
        calls = _collapse(tracer.handed)
        modules = _collapse(c.rpartition(".")[0] for c in calls)
        returns = [m for i, m in enumerate(modules) if m in modules[:i]]
        print("the engine hands its input to:", " -> ".join(modules))
        print("  by calling:", " ".join(dict.fromkeys(calls)))
        print(f"returns to a module already left: {len(returns)} ({', '.join(returns) or 'none'})")
        for path, n in sorted(tracer.callbacks.items()):
            print(f"call-back {path} ({n} calls)")
        print(f"call-backs: {len(tracer.callbacks)}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

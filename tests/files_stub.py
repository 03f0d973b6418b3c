"""A detector stub for tests/test_files.py, light enough for its child processes (numpy only)."""
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


class Stub:
    """A detector for predict: one box whose score says which run made it (no torch)."""

    task = "object-detection"

    def __init__(self, version: int = 1, wait_for: Path | None = None):
        self.config = SimpleNamespace(classes=("a", "b"))
        self.version, self.wait_for = version, wait_for

    def predict(self, images, batch_size=1):
        while self.wait_for is not None and not self.wait_for.exists():
            time.sleep(0.02)
        return [{"boxes": np.array([[1.0, 1.0, 5.0, 5.0]], np.float32), "labels": np.array([1]),
                 "scores": np.array([0.5 + self.version / 100], np.float32)} for _ in images]

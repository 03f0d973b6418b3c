"""Independent forwards of each source format, over the source's own tensor names."""
from .detectron import DetectronReference
from .detectron2 import Detectron2Reference
from .mmdet import MMDetReference
from .paddle import PaddleReference

__all__ = ["REFERENCES"]

REFERENCES = {"mmdet": MMDetReference, "detectron": DetectronReference, "detectron2": Detectron2Reference,
              "paddle": PaddleReference}

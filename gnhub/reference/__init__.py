"""Independent forwards of each source format, over the source's own tensor names."""
from .detectron import DetectronReference
from .mmdet import MMDetReference

REFERENCES = {"mmdet": MMDetReference, "detectron": DetectronReference}

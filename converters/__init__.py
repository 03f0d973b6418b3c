"""Source formats gnhub converts from: one module each, a table of names and conventions."""
from . import mmdet

FORMATS = {mmdet.NAME: mmdet}

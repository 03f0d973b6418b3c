"""Fine-tuning: COCO-format training data (data.py) and mmdetection's recipe (loop.py)."""
from .data import CocoInstances
from .loop import Recipe, finetune

__all__ = ["CocoInstances", "Recipe", "finetune"]

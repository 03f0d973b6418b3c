"""Fine-tuning: COCO-format training data (data.py) and mmdetection's recipe (loop.py)."""
from .data import CocoInstances
from .loop import Recipe, finetune, finetune_model

__all__ = ["CocoInstances", "Recipe", "finetune", "finetune_model"]

"""gnhub: Group Normalization Mask R-CNN checkpoints in plain PyTorch."""
__version__ = "0.1.0"

from .api import load  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .modeling import GNMaskRCNN, GNResNetClassifier  # noqa: E402
from .zoo import list_models  # noqa: E402

__all__ = ["GNMaskRCNN", "GNResNetClassifier", "ModelConfig", "__version__", "evaluate", "list_models", "load"]

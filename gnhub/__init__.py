"""gnhub: Group Normalization Mask R-CNN checkpoints in plain PyTorch.

Names are imported on first use (PEP 562), so `import gnhub` and the torch-free parts
(`gnhub.zoo`, `gnhub.runtime`, the CLI's help) do not pay for torch.
"""
__version__ = "0.1.0"

_LAZY = {
    "load": ".api", "ModelConfig": ".config", "evaluate": ".evaluate", "GNMaskRCNN": ".modeling",
    "GNResNetClassifier": ".modeling", "list_models": ".zoo", "register": ".zoo", "tune_cpu": ".allocator",
}
__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str):
    if name in _LAZY:
        # PEP 562: `import gnhub` loads nothing until a name is used
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gnhub' has no attribute {name!r}")


def __dir__():
    return __all__

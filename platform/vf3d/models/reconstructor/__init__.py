"""The VFusion3D/LRM image→triplane reconstructor, piece by piece."""

_SOURCE = {
    "Reconstructor": ".model",
    "RenderOutput": ".renderer",
    "TriplaneRenderer": ".renderer",
}
"""Each public name → the submodule that defines it."""

__all__ = ["Reconstructor", "RenderOutput", "TriplaneRenderer"]


def __getattr__(name: str):
    # Lazy (PEP 562): importing the package, or its light `config` module, must not import torch.
    if name not in _SOURCE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_SOURCE[name], __name__), name)

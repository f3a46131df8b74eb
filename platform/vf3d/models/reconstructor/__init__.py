"""The VFusion3D/LRM image→triplane reconstructor, piece by piece."""

from vf3d.models.reconstructor.model import Reconstructor
from vf3d.models.reconstructor.renderer import RenderOutput, TriplaneRenderer

__all__ = ["Reconstructor", "RenderOutput", "TriplaneRenderer"]

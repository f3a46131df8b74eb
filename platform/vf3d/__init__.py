"""vf3d: an open, scalable VFusion3D platform on Ray."""

__version__ = "0.1.0"

"""Multi-view (orbit) video diffusion: a Wan-style DiT fine-tuned to generate 360° orbits.

Given a first frame, a prompt and the orbit's elevation, `OrbitVideoPipeline.generate_orbit`
generates the V-view orbit and returns it with the views' cameras. `OrbitVideoModel` is the same
model as a trainable `nn.Module` (flow-matching loss), and `FirstFrameGenerator` draws first
frames from prompts. Built from diffusers classes (WanTransformer3DModel, AutoencoderKLWan,
FlowMatchEulerDiscreteScheduler) without forking them.
"""

_SOURCE = {
    "build_video_pipeline": ".build",
    "close_orbit": ".conditioning",
    "orbit_video_frames": ".conditioning",
    "ElevationEmbedder": ".elevation",
    "TRAINABLE_MODES": ".model",
    "OrbitVideoModel": ".model",
    "OrbitVideoOutput": ".pipeline",
    "OrbitVideoPipeline": ".pipeline",
    "orbit_cameras": ".pipeline",
    "FirstFrameGenerator": ".text_to_image",
    "build_first_frame_generator": ".text_to_image",
}
"""Each public name → the submodule that defines it."""

__all__ = [
    "TRAINABLE_MODES",
    "ElevationEmbedder",
    "FirstFrameGenerator",
    "OrbitVideoModel",
    "OrbitVideoOutput",
    "OrbitVideoPipeline",
    "build_first_frame_generator",
    "build_video_pipeline",
    "close_orbit",
    "orbit_cameras",
    "orbit_video_frames",
]


def __getattr__(name: str):
    # Lazy (PEP 562): importing the package, or its light `config` module, must not import torch and diffusers.
    if name not in _SOURCE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_SOURCE[name], __name__), name)

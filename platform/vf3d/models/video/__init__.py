"""Multi-view (orbit) video diffusion: a Wan-style DiT fine-tuned to generate 360° orbits.

Given a first frame, a prompt and the orbit's elevation, `OrbitVideoPipeline.generate_orbit`
generates the V-view orbit and returns it with the views' cameras. `OrbitVideoModel` is the same
model as a trainable `nn.Module` (flow-matching loss), and `FirstFrameGenerator` draws first
frames from prompts. Built from diffusers classes (WanTransformer3DModel, AutoencoderKLWan,
FlowMatchEulerDiscreteScheduler) without forking them.
"""

from vf3d.models.video.build import build_video_pipeline
from vf3d.models.video.conditioning import close_orbit, orbit_video_frames
from vf3d.models.video.elevation import ElevationEmbedder
from vf3d.models.video.model import TRAINABLE_MODES, OrbitVideoModel
from vf3d.models.video.pipeline import OrbitVideoOutput, OrbitVideoPipeline, orbit_cameras
from vf3d.models.video.text_to_image import FirstFrameGenerator, build_first_frame_generator

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

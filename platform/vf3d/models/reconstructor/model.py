"""The image → triplane → NeRF reconstructor (VFusion3D / LRM architecture;
docs/vfusion3d.md#reconstructor-architecture)."""

from __future__ import annotations

import torch

from vf3d.models.pretrained import PretrainedModel
from vf3d.models.reconstructor.config import ReconstructorConfig
from vf3d.models.reconstructor.decoder import TriplaneDecoder, activate_density, sample_triplane
from vf3d.models.reconstructor.encoder import ImageEncoder
from vf3d.models.reconstructor.renderer import FieldFunction, RenderOutput, TriplaneRenderer
from vf3d.models.reconstructor.transformer import CameraEmbedder, TriplaneTransformer, TriplaneUpsampler


class Reconstructor(PretrainedModel):
    """Single image + source camera → triplane; triplane + render cameras → images.

    Pieces (each its own module): `encoder` (DINOv2), `camera_embedder`, `transformer`
    (camera-modulated triplane transformer), `upsampler` (shared deconv), `decoder` (MLP) and the
    parameter-free `renderer`.
    """

    model_type = "vf3d-reconstructor"
    config_class = ReconstructorConfig

    def __init__(self, config: ReconstructorConfig) -> None:
        super().__init__(config.validate())
        self.encoder = ImageEncoder(config.encoder)
        self.camera_embedder = CameraEmbedder(config.transformer.camera_embed_dim)
        self.transformer = TriplaneTransformer(config.transformer, config.triplane, context_dim=config.encoder.hidden_size)
        self.upsampler = TriplaneUpsampler(config.transformer.width, config.triplane)
        self.decoder = TriplaneDecoder(3 * config.triplane.channels, config.decoder)
        self.renderer = TriplaneRenderer(config.renderer, density_activation=activate_density)

    def encode(self, images: torch.Tensor, source_cameras: torch.Tensor) -> torch.Tensor:
        """Images and their source cameras → triplanes.

        Args:
            images: [N, 3, S, S] in [0, 1], S = config.encoder.image_size, object centred on white.
            source_cameras: [N, 16] source-camera vectors (the canonical one at inference).
        Returns:
            planes [N, 3, C, R, R].
        """
        expected = self.config.encoder.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (expected, expected):
            raise ValueError(f"images must be [N, 3, {expected}, {expected}], got {tuple(images.shape)}")
        image_tokens = self.encoder(images)
        camera_embedding = self.camera_embedder(source_cameras.to(image_tokens.dtype))
        return self.upsampler(self.transformer(image_tokens, camera_embedding))

    def query_raw(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The field of each object before the density activation: planes [N, 3, C, R, R],
        points [N, P, 3] → raw density [N, P, 1], rgb [N, P, 3]."""
        return self.decoder(sample_triplane(planes, points, self.config.renderer.box_half_size))

    def query_points(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The field of each object: planes [N, 3, C, R, R], points [N, P, 3] → density [N, P, 1] ≥ 0, rgb [N, P, 3]."""
        raw_density, rgb = self.query_raw(planes, points)
        return activate_density(raw_density), rgb

    def field(self, planes: torch.Tensor) -> FieldFunction:
        """The renderer's field function bound to these triplanes (raw densities: the renderer
        activates them after averaging over each interval, as the release does;
        docs/vfusion3d.md#rendering-order)."""
        return lambda points: self.query_raw(planes, points)

    def render(
        self,
        planes: torch.Tensor,
        render_cameras: torch.Tensor,
        render_size: int | None = None,
        background: torch.Tensor | None = None,
        crop_offsets: torch.Tensor | None = None,
        crop_size: tuple[int, int] | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render views of the triplanes.

        Args:
            planes: [N, 3, C, R, R]; render_cameras: [N, V, 25].
            render_size: side of the full views (config.renderer.render_size when None).
            background: [N, V, 3] colour per view (white when None).
            crop_offsets: [N, V, 2] and crop_size (h, w): render only that patch of each view.
        Returns:
            RenderOutput: rgb [N, V, 3, h, w], depth and opacity [N, V, 1, h, w].
        """
        size = render_size or self.config.renderer.render_size
        return self.renderer(self.field(planes), render_cameras, size, size, background, crop_offsets, crop_size, deterministic, generator)

    def forward(
        self, images: torch.Tensor, source_cameras: torch.Tensor, render_cameras: torch.Tensor, **render_kwargs
    ) -> tuple[torch.Tensor, RenderOutput]:
        """encode + render: images [N, 3, S, S], source [N, 16], render [N, V, 25] → (planes, views)."""
        planes = self.encode(images, source_cameras)
        return planes, self.render(planes, render_cameras, **render_kwargs)

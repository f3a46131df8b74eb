"""DINOv2 image encoder (transformers), random from config or from a pretrained directory (a local
path or an object-store URI)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vf3d import storage
from vf3d.models.reconstructor.config import EncoderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


POSITION_GRID_OFFSET = 0.1
"""transformers <= 4.45 (after the original DINO code) added 0.1 to the target patch count to
dodge floating-point error in the scale factor; the scale factor then also moves the places the
bicubic resampling reads, so weights trained with it expect exactly those embeddings
(docs/vfusion3d.md#position-embeddings)."""


def scale_factor_interpolation(position_embeddings: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Position embeddings for an input of height × width pixels, resized as transformers <= 4.45.

    Args:
        position_embeddings: [1, 1 + g², D] (CLS first, then a g × g grid, row-major).
        height, width: input image size in pixels.
        patch_size: patch side in pixels.
    Returns:
        [1, 1 + (height // p)·(width // p), D]: the grid resampled bicubically with
        scale_factor = ((height // p + 0.1) / g, (width // p + 0.1) / g); the input table itself
        when the sizes already agree.
    """
    num_positions = position_embeddings.shape[1] - 1
    rows, columns = height // patch_size, width // patch_size
    if rows * columns == num_positions and rows == columns:
        return position_embeddings
    side = math.sqrt(num_positions)
    dim = position_embeddings.shape[-1]
    grid = position_embeddings[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(),
        scale_factor=(float((rows + POSITION_GRID_OFFSET) / side), float((columns + POSITION_GRID_OFFSET) / side)),
        mode="bicubic",
        align_corners=False,
    ).to(position_embeddings.dtype)
    if grid.shape[-2:] != (rows, columns):
        raise ValueError(f"position grid resized to {tuple(grid.shape[-2:])}, expected {(rows, columns)}")
    return torch.cat([position_embeddings[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def dinov2_config(config: EncoderConfig):
    """The transformers config for an encoder described by our `EncoderConfig`."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    kwargs = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=config.position_image_size,
        layerscale_value=1.0,
    )
    if config.num_register_tokens:
        return Dinov2WithRegistersConfig(num_register_tokens=config.num_register_tokens, **kwargs)
    return Dinov2Config(**kwargs)


class ImageEncoder(torch.nn.Module):
    """Images → patch tokens (CLS first) from DINOv2's last hidden state.

    The encoder is trained with the rest of the model (not frozen), as in VFusion3D
    (docs/vfusion3d.md#encoder).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        self.config = config
        model_class = Dinov2WithRegistersModel if config.num_register_tokens else Dinov2Model
        on_meta = torch.empty(0).device.type == "meta"
        if config.pretrained_path and not on_meta:
            # An object-store URI is downloaded once per process (the directory itself when local).
            local = storage.cached_local_copy(config.pretrained_path)
            self.dinov2 = model_class.from_pretrained(str(local), local_files_only=True)
            self._check_pretrained_matches(self.dinov2.config)
        else:
            self.dinov2 = model_class(dinov2_config(config))
        if config.position_interpolation == "scale_factor":
            self._use_scale_factor_interpolation()

    def _use_scale_factor_interpolation(self) -> None:
        """Make DINOv2 resize its position embeddings as transformers <= 4.45 did, whatever
        transformers is installed (an instance attribute shadows the class's method)."""
        embeddings = self.dinov2.embeddings
        patch_size = self.config.patch_size

        def interpolate_pos_encoding(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
            return scale_factor_interpolation(embeddings.position_embeddings, height, width, patch_size)

        embeddings.interpolate_pos_encoding = interpolate_pos_encoding

    def _check_pretrained_matches(self, loaded) -> None:
        expected = {
            "hidden_size": self.config.hidden_size,
            "num_hidden_layers": self.config.num_layers,
            "num_attention_heads": self.config.num_heads,
            "patch_size": self.config.patch_size,
        }
        wrong = {key: (getattr(loaded, key), value) for key, value in expected.items() if getattr(loaded, key) != value}
        if wrong:
            details = ", ".join(f"{key}={got} (config says {want})" for key, (got, want) in wrong.items())
            raise ValueError(f"pretrained encoder at {self.config.pretrained_path} does not match encoder config: {details}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image handed to the transformer: CLS + patches (registers are dropped)."""
        return (self.config.image_size // self.config.patch_size) ** 2 + 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, S, S] in [0, 1] at S = config.image_size → tokens [N, T, hidden_size], T = num_tokens."""
        if self.config.normalize_input:
            # Constants, not buffers: a model built on the meta device then loaded stays complete.
            mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            images = (images - mean) / std
        hidden = self.dinov2(pixel_values=images).last_hidden_state  # [N, 1 + registers + patches, D]
        # Register tokens are scratch space for the ViT; OpenLRM passes only CLS + patches on
        # (docs/vfusion3d.md#openlrm).
        registers = self.config.num_register_tokens
        return torch.cat([hidden[:, :1], hidden[:, 1 + registers :]], dim=1) if registers else hidden

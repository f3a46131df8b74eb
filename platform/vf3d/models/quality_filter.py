"""The quality filter's two networks: a frozen DINOv2 orbit-feature encoder and a linear probe.

VFusion3D hand-labelled ~2K generated videos and fitted a linear SVM on DINO features to keep only
clean orbits (docs/vfusion3d.md#data-engine). We do the same with a logistic-regression probe: `OrbitFeatureEncoder` turns an orbit
(a few evenly spaced views) into one fixed-length vector of frozen encoder features, and
`QualityProbe` (standardisation + one linear layer) turns that vector into P(good).

The probe is only meaningful on the features of the exact encoder it was fitted on, so the encoder
has a `fingerprint` (a hash of its weights and preprocessing) that the saved filter records and
checks.
Pure torch/transformers: no ray, deepspeed or torch.distributed.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F

from vf3d.models.config import FilterEncoderConfig, QualityProbeConfig
from vf3d.models.orbit_views import evenly_spaced_views
from vf3d.models.pretrained import PretrainedModel
from vf3d.models.reconstructor.encoder import ImageEncoder


class OrbitFeatureEncoder(torch.nn.Module):
    """Orbit videos → one frozen-feature vector per orbit.

    Each selected view gives concat(CLS token, mean of its patch tokens) [2D]; the orbit feature is
    concat(mean over views, std over views) [4D]. The mean says what the object looks like, the std
    how much it changes around the orbit (an object that changes identity, or a frame of noise,
    shows up there).

    The encoder is DINOv2 from `config.encoder.pretrained_path`, or, with `config.random_init` and
    no path, a random one seeded by `config.seed` (the global RNG is left untouched), so the same
    config always yields the same weights. It is frozen and always in eval mode.
    """

    def __init__(self, config: FilterEncoderConfig) -> None:
        super().__init__()
        self.config = config.validate()
        if config.encoder.pretrained_path:
            self.encoder = ImageEncoder(config.encoder)
        else:
            # fork_rng: seeding must not disturb the caller's random stream. Built on the CPU
            # generator so the weights are the same on every machine, GPU or not.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.encoder = ImageEncoder(config.encoder)
        self.encoder.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> OrbitFeatureEncoder:
        """Stays in eval mode whatever is asked: features must not depend on a parent's mode."""
        return super().train(False)

    @property
    def feature_dim(self) -> int:
        """Length of an orbit feature: 4 × the encoder's hidden size."""
        return 4 * self.config.encoder.hidden_size

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that decides the features: the encoder's weights (names,
        shapes, float32 values) and how views are picked and prepared (num_views, image_size,
        normalize_input).

        Equal fingerprints mean equal features, so a probe saved with one encoder can refuse
        another (another seed, another DINOv2 checkpoint, other preprocessing).
        """
        digest = hashlib.sha256()
        preprocessing = {
            "num_views": self.config.num_views,
            "image_size": self.config.encoder.image_size,
            "normalize_input": self.config.encoder.normalize_input,
        }
        digest.update(json.dumps(preprocessing, sort_keys=True).encode("utf-8"))
        for name, tensor in sorted(self.encoder.state_dict().items()):
            values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(f"{name}:{tuple(values.shape)}\n".encode())
            digest.update(values.numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()  # a frozen feature extractor: nothing is ever differentiated through it
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode orbits.

        Args:
            frames: [B, V, H, W, 3] RGB views in orbit order, uint8 in 0..255 or float in [0, 1]
                (objects on white, as generated and stored); any H, W (resized to the encoder's
                image_size with antialiased bilinear filtering).
        Returns:
            float32 [B, feature_dim] orbit features.
        """
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [B, V, H, W, 3], got {tuple(frames.shape)}")
        parameter = next(self.encoder.parameters())
        batch, views = frames.shape[:2]
        frames = frames.to(parameter.device)
        selected = frames[:, torch.from_numpy(evenly_spaced_views(views, self.config.num_views)).to(frames.device)]
        images = selected.flatten(0, 1).permute(0, 3, 1, 2)  # [B·n, 3, H, W]
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        size = self.config.encoder.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tokens = self.encoder(images.to(parameter.dtype)).float()  # [B·n, T, D], CLS first
        per_view = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1).view(batch, self.config.num_views, -1)
        return torch.cat([per_view.mean(dim=1), per_view.std(dim=1, correction=0)], dim=-1)


class QualityProbe(PretrainedModel):
    """Orbit features → logit of P(good): standardise with the training set's statistics, then
    one linear layer (logistic regression).

    Buffers `feature_mean` and `feature_std` [F] are saved with the weights, so a loaded probe
    standardises exactly as the fitted one did.
    """

    model_type = "vf3d-quality-probe"
    config_class = QualityProbeConfig

    def __init__(self, config: QualityProbeConfig) -> None:
        super().__init__(config.validate())
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        self.linear = torch.nn.Linear(config.feature_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, F] orbit features (OrbitFeatureEncoder) → logits [B]."""
        if features.ndim != 2 or features.shape[1] != self.config.feature_dim:
            raise ValueError(f"features must be [B, {self.config.feature_dim}], got {tuple(features.shape)}")
        standardised = (features - self.feature_mean) / self.feature_std
        return self.linear(standardised).squeeze(-1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, F] → probabilities of "good" [B] in [0, 1]."""
        return torch.sigmoid(self(features))

"""CLIP similarities of reconstructions (open_clip): input image ↔ rendered views, prompt ↔ views.

    CLIP image similarity = mean over views v of cos(E_img(input), E_img(view_v))
    CLIP text similarity  = mean over views v of cos(E_txt(prompt), E_img(view_v))

cos is the cosine of the (unscaled) embeddings, so both lie in [−1, 1] and an image compared with
itself scores 1; these are the numbers the VFusion3D paper reports (e.g. 0.851 / 0.253;
docs/vfusion3d.md#results-to-beat), not CLIPScore's 100·max(cos, 0).

Weights never come from a hub: `EvalClipConfig.weights_path` is an open_clip checkpoint file for
`EvalClipConfig.model`, or a directory with `open_clip_config.json` and its weights (the hub
layout, loaded through open_clip's "local-dir:" schema), at a local path or an object-store URI
(`s3://`, `gs://`: downloaded once per process into a local cache, then loaded the same way).
Random weights only with `allow_random`, and `ClipScorer.random` says so. The BPE tokenizer ships
inside open_clip.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from vf3d import storage
from vf3d.config import ConfigError
from vf3d.evaluation.config import EvalClipConfig
from vf3d.models.pretrained import local_weights

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LOCAL_CONFIG_NAME = "open_clip_config.json"
_PATH_KEY = "clip.weights_path"


@contextlib.contextmanager
def _root_messages_dropped(start: str) -> Iterator[None]:
    """The root logger drops messages starting with `start` within the block. open_clip announces
    random weights with a bare `logging.warning`; when they are what was asked for
    (`allow_random`), vf3d's own warning already says so, once, with what it means for the scores."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(start)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_clip(config: EvalClipConfig, device: str | torch.device = "cpu"):
    """(model, tokenizer, description, random) for `config`; the model frozen, in eval mode.

    Raises:
        ConfigError: no weights path and random weights not allowed; a path that does not exist;
            weights that do not fit the architecture; an unknown architecture name.
    """
    import open_clip

    location = config.weights_path
    path = local_weights(location, _PATH_KEY) if location is not None else None
    if path is None and not config.allow_random:
        raise ConfigError(
            f"{_PATH_KEY} is required for CLIP similarities: give --clip PATH (an open_clip checkpoint file for "
            f"clip.model={config.model!r}, or a directory with {LOCAL_CONFIG_NAME} and its weights); set clip.enabled: false "
            "to skip them, or clip.allow_random: true for tests (meaningless similarities)"
        )
    shown = location if location is not None and storage.is_uri(location) else path  # what messages name
    if path is not None and not path.exists():
        raise ConfigError(f"{_PATH_KEY}: no such file or directory: {shown}")
    if path is not None and path.is_dir():
        if not (path / LOCAL_CONFIG_NAME).is_file():
            raise ConfigError(
                f"{_PATH_KEY}: {shown} is a directory without {LOCAL_CONFIG_NAME}; give the checkpoint file itself, or a directory in open_clip's hub layout"
            )
        name, pretrained, description = f"local-dir:{path}", None, str(shown)
    else:
        name, pretrained, description = (
            config.model,
            (str(path) if path is not None else None),
            (f"{config.model} from {shown}" if path is not None else f"{config.model} (random weights)"),
        )
    random_notice = _root_messages_dropped("No pretrained weights loaded") if path is None else contextlib.nullcontext()
    try:
        with random_notice:
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as error:  # RuntimeError for unknown names/bad state dicts, ValueError, OSError...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        where = f"{_PATH_KEY}: cannot load {shown}" if path is not None else f"clip.model: cannot build {config.model!r}"
        raise ConfigError(f"{where} as open_clip weights ({type(error).__name__}: {first_line})") from error
    model.requires_grad_(False)
    return model.eval(), tokenizer, description, path is None


class ClipScorer:
    """A loaded CLIP model that embeds images [N, 3, H, W] in [0, 1] and prompts."""

    def __init__(self, config: EvalClipConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model, self.tokenizer, self.description, self.random = load_clip(config, self.device)
        preprocess = getattr(self.model.visual, "preprocess_cfg", None) or {}
        size = preprocess.get("size", getattr(self.model.visual, "image_size", 224))
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.mean = torch.tensor(preprocess.get("mean", OPENAI_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.get("std", OPENAI_STD), device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] → unit embeddings [N, D] (float32).

        Resized (bicubic, antialiased) straight to the model's input size, as open_clip's own
        transform does for square images, then normalised with the model's mean and std.
        """
        embeddings = []
        for start in range(0, len(images), self.config.batch_size):
            batch = images[start : start + self.config.batch_size].to(self.device, torch.float32)
            batch = F.interpolate(batch, size=self.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            embeddings.append(self.model.encode_image((batch - self.mean) / self.std).float())
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Prompts → unit embeddings [N, D] (float32)."""
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def similarities(
        self, reference: torch.Tensor, views: torch.Tensor, prompt: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cosine similarities of each view [V, 3, h, w] with the reference image [3, H, W] and with
        the prompt → ([V], [V] or None without a prompt); the views are embedded once."""
        view_embeddings = self.embed_images(views)
        image = view_embeddings @ self.embed_images(reference[None])[0]
        text = view_embeddings @ self.embed_texts([prompt])[0] if prompt else None
        return image, text

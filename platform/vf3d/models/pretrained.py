"""The model-directory format shared by vf3d models: `config.json` + `model.safetensors`.

Diffusers' pattern: a model is built from one typed config, and a directory holding that config
and its weights is all it takes to rebuild it. Weights are safetensors only, so loading never
unpickles anything. A model directory may be a local path or an object-store URI (`s3://`,
`gs://`; vf3d.storage): saving publishes each file atomically, weights before config.json, and
loading downloads the weights to a temporary file first.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import atomic_path, atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

M = TypeVar("M", bound="PretrainedModel")


def local_weights(location: str, setting: str, file_only: bool = False) -> Path:
    """Weights named by a config setting (a file, or a directory when not `file_only`) as a local
    path: the path itself (user home expanded) when local, a cached download (once per process,
    the name kept) of an object-store URI.

    Raises:
        ConfigError naming `setting`: nothing at the URI, or a URI that cannot be used.
    """
    if not storage.is_uri(location):
        return Path(location).expanduser()
    try:
        if not (storage.is_file(location) if file_only else storage.exists(location)):
            raise config_lib.ConfigError(f"{setting}: no such file{'' if file_only else ' or directory'}: {location}")
        return storage.cached_local_copy(location)
    except (storage.StorageError, OSError) as error:
        raise config_lib.ConfigError(f"{setting}: cannot fetch {location} ({' '.join(str(error).split())[:300]})") from error


def make_readable(path: str | os.PathLike) -> None:
    """Give a file safetensors wrote (it creates files with mode 0600) the mode a plain `open()`
    would have given it under this process's umask, so that a server running as another user can
    read a published model."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


class ModelDirectoryError(ValueError):
    """A model directory is missing, incomplete or for another kind of model."""


class PretrainedModel(torch.nn.Module):
    """Base class adding `save_pretrained` / `from_pretrained` to a config-built module.

    Subclasses set `model_type` and `config_class` and take the config as their only argument.
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path | str:
        """Write config.json + model.safetensors into `directory`, atomically.

        Both files are written as partial files (`vf3d.atomic`) and renamed into place only when
        both are complete, weights first and config.json last, so an interrupted save never leaves
        a half-written model where a good one was, and a new directory that has a config.json has
        its weights too. A failed first save removes the directory it created. On an object store
        (a URI) both files are published the same way, in the same order.
        """
        directory = storage.local_or_uri(directory)
        created = not storage.exists(directory)
        storage.makedirs(directory)
        document = {
            "model_type": self.model_type,
            "format_version": FORMAT_VERSION,
            **(metadata or {}),
            "config": config_lib.to_dict(self.config),
        }
        try:
            # Nested: the inner block (weights) is renamed first, the outer (config) after it.
            with (
                atomic_write(storage.join(directory, CONFIG_NAME), "w") as config_file,
                atomic_path(storage.join(directory, WEIGHTS_NAME)) as weights_file,
            ):
                config_file.write(json.dumps(document, indent=2) + "\n")
                # safetensors refuses shared or non-contiguous storage; clone keeps the module intact.
                state = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in self.state_dict().items()}
                save_file(state, str(weights_file), metadata={"model_type": self.model_type})
                make_readable(weights_file)
        except BaseException:
            if created and not storage.is_uri(directory):
                with contextlib.suppress(OSError):  # rmdir only removes it empty: our partial files are gone already
                    directory.rmdir()
            raise
        return directory

    @classmethod
    def load_config(cls, directory: str | os.PathLike) -> Any:
        """Read and validate the config of a model directory (a path or a URI) without loading weights."""
        directory = storage.local_or_uri(directory)
        config_path = storage.join(directory, CONFIG_NAME)
        if storage.is_file(directory):
            raise ModelDirectoryError(f"{directory} is a file, not a model directory (config.json + model.safetensors)")
        if not storage.is_dir(directory):
            raise ModelDirectoryError(f"model directory not found: {directory}")
        if not storage.is_file(config_path):
            raise ModelDirectoryError(f"{directory} is not a vf3d model directory: {CONFIG_NAME} is missing")
        try:
            document = json.loads(storage.read_text(config_path))
        except json.JSONDecodeError as error:
            raise ModelDirectoryError(f"{config_path} is not valid JSON: {error}") from None
        if document.get("model_type") != cls.model_type:
            raise ModelDirectoryError(f"{directory} holds a {document.get('model_type')!r} model, expected {cls.model_type!r}")
        try:
            config = config_lib.from_dict(cls.config_class, document["config"])
        except (KeyError, config_lib.ConfigError) as error:
            raise ModelDirectoryError(f"{config_path}: invalid config: {error}") from None
        return config.validate() if hasattr(config, "validate") else config

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> M:
        """Rebuild the model from `directory` (a path or a URI) and load its weights (strict: every
        key must match)."""
        directory = storage.local_or_uri(directory)
        config = cls.load_config(directory)
        weights_path = storage.join(directory, WEIGHTS_NAME)
        if not storage.is_file(weights_path):
            raise ModelDirectoryError(f"{directory} has no {WEIGHTS_NAME}")
        with torch.device("meta"):
            model = cls(config)
        with storage.local_copy(weights_path) as local_weights:  # the file itself when local
            state = load_file(str(local_weights), device=str(device))
        try:
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as error:  # shape mismatches: the weights belong to another config
            raise ModelDirectoryError(f"{weights_path} does not match its config: {' '.join(str(error).split())[:400]}") from None
        if missing or unexpected:
            raise ModelDirectoryError(
                f"{weights_path} does not match its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        left_on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
        if left_on_meta:
            raise ModelDirectoryError(f"{weights_path} left tensors uninitialised: {left_on_meta[:5]}")
        model.to(device=device, dtype=dtype)
        return model.eval()

"""Shared fixtures: tiny seeded models written to disk once per test session."""

from __future__ import annotations

import os

import pytest

# Tests never attach to a stray Ray cluster nor need its auth token (environment.md).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def debug_config():
    """A fresh `debug` reconstructor config."""
    from vf3d import config

    return config.preset(config.RECONSTRUCTOR_PRESETS, "debug")


@pytest.fixture(scope="session")
def debug_model_dir(tmp_path_factory, debug_config):
    """A seeded random `debug` reconstructor saved as a model directory."""
    import torch

    from vf3d.models.reconstructor import Reconstructor

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("models") / "debug-reconstructor"
    Reconstructor(debug_config).save_pretrained(directory)
    return directory

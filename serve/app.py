"""Application builder for `serve run serve/config.yaml` / `serve deploy` (import path `serve.app:build_app`).

Thin on purpose: Serve validates the config's `args:` against `ServeAppArgs` (the parameter's
annotation), and the library builds the deployments. No `from __future__ import annotations` here:
Serve reads the annotation as a class to know which model to validate with.
"""

from ray.serve import Application

from vf3d.serving.app import ServeAppArgs, app_from_args


def build_app(args: ServeAppArgs) -> Application:
    """Typed args (model directory, preset, overrides) → the image-to-3D application."""
    return app_from_args(args)

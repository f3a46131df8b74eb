"""Ray Data pipelines: orbit rendering of 3D assets and synthetic orbit generation."""

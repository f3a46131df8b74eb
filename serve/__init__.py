"""Ray Serve entrypoint package: `serve run serve/config.yaml` imports `serve.app:build_app`."""

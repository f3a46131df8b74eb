"""The image-to-3D endpoint on Ray Serve: HTTP boundary (http.py), deployments, application (app.py)."""

"""Evaluation of the reconstructor: image metrics (PSNR, SSIM, LPIPS) on held-out views, CLIP
similarities (`clip_metrics`), Chamfer distance and F-score (`geometry`), the `vf3d evaluate`
driver (`evaluate`) and its report (`report`), training curves, image grids and bar charts
(`plots`). Importing the package is cheap; submodules import torch or matplotlib themselves."""

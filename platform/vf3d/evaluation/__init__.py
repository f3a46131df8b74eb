"""Evaluation of the reconstructor: image metrics (PSNR, SSIM, LPIPS) on held-out views, training
curves and image grids for the report. Importing the package is cheap; submodules import torch or
matplotlib themselves."""

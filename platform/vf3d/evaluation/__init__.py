"""Evaluation of the reconstructor: CLIP similarities (`clip_metrics`), Chamfer distance and F-score
(`geometry`), the `vf3d evaluate` driver (`evaluate`) and its report (`report`). The image metrics
(PSNR, SSIM, LPIPS: `vf3d.image_metrics`) and the figures (`vf3d.plots`) live below this package
because training's validation uses them too. Importing the package is cheap; submodules import
torch or matplotlib themselves."""

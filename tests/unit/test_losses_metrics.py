"""Reconstructor losses (LPIPS with a local backbone, MSE, opacity, TV), evaluation metrics
(PSNR, SSIM against scikit-image, LPIPS) and report plots, all on real computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vf3d.config import ConfigError
from vf3d.image_metrics import LpipsMetric, psnr, ssim
from vf3d.models.config import ReconLossConfig
from vf3d.models.lpips_network import build_lpips
from vf3d.plots import GRID_PADDING, append_jsonl, image_grid, metric_title, plot_curves, read_jsonl, stage_switches
from vf3d.training.losses import ReconstructionLoss, total_variation


def random_lpips_config(**overrides) -> ReconLossConfig:
    return ReconLossConfig(lpips_net="squeeze", lpips_random_backbone=True, **overrides)


@pytest.fixture(scope="module")
def squeeze_lpips():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_lpips(random_lpips_config())


def torchvision_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    return {key: value.contiguous() for key, value in getattr(torchvision.models, arch)(weights=None).state_dict().items()}


# ---------------------------------------------------------------------------------------- metrics


def test_psnr_is_inf_for_identical_images_and_matches_the_mse_formula():
    generator = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 3, 16, 20, generator=generator)
    assert psnr(pred, pred.clone()).shape == (3,)
    assert torch.isinf(psnr(pred, pred.clone())).all()

    noise = torch.randn(3, 3, 16, 20, generator=generator) * torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    target = (pred + noise).clamp(0, 1)
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    expected = 10 * torch.log10(1 / mse)
    torch.testing.assert_close(psnr(pred, target).double(), expected, atol=1e-4, rtol=0)
    values = psnr(pred, target)
    assert values[0] > values[1] > values[2]  # more noise, lower PSNR
    # Leading dims are kept: [N, V, 3, H, W] → [N, V].
    assert psnr(pred.view(1, 3, 3, 16, 20), target.view(1, 3, 3, 16, 20)).shape == (1, 3)


def photos(side: int = 96) -> np.ndarray:
    """Centre crops of real photos shipped with scikit-image, [B, side, side, 3] float64 in [0, 1]."""
    from skimage import data

    crops = []
    for image in (data.astronaut(), data.chelsea(), data.coffee()):
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crops.append(image[top : top + side, left : left + side].astype(np.float64) / 255.0)
    return np.stack(crops)


def test_ssim_matches_scikit_image_on_real_photos():
    from scipy.ndimage import gaussian_filter
    from skimage.metrics import structural_similarity

    clean = photos()
    rng = np.random.default_rng(0)
    distorted = [
        np.clip(clean[0] + rng.normal(0, 0.08, clean[0].shape), 0, 1),  # noise
        gaussian_filter(clean[1], sigma=(1.5, 1.5, 0)),  # blur
        clean[2] ** 1.6,  # tone change
    ]
    distorted = np.stack(distorted)
    to_torch = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).float()  # noqa: E731
    ours = ssim(to_torch(distorted), to_torch(clean))
    reference = [
        structural_similarity(
            d.astype(np.float32).astype(np.float64),
            c.astype(np.float32).astype(np.float64),
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for d, c in zip(distorted, clean)
    ]
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)
    assert len({round(value, 2) for value in reference}) == 3 and max(reference) < 0.99  # the cases differ
    torch.testing.assert_close(ssim(to_torch(clean), to_torch(clean)), torch.ones(3))


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 3, 8, 32), torch.rand(1, 3, 8, 32))


def test_lpips_metric_gives_one_distance_per_image(squeeze_lpips):
    metric = LpipsMetric(squeeze_lpips)
    generator = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 3, 3, 32, 32, generator=generator)
    target = pred.clone()
    target[0, 1] = torch.rand(3, 32, 32, generator=generator)
    distances = metric(pred, target)
    assert distances.shape == (2, 3)
    assert distances[0, 1] > 1e-3
    torch.testing.assert_close(distances[1], torch.zeros(3))
    assert distances[0, 0] == 0 and distances[0, 2] == 0
    metric.train()
    assert not metric.lpips.training


# ------------------------------------------------------------------------------------- TV and loss


def test_total_variation_of_constant_planes_is_zero_and_of_a_ramp_is_analytic():
    assert total_variation(torch.full((2, 3, 4, 8, 8), 0.7)).item() == 0.0
    rows = torch.arange(8.0).view(8, 1)
    cols = torch.arange(10.0).view(1, 10)
    ramp = (0.3 * rows - 0.05 * cols).expand(2, 3, 4, 8, 10)
    assert total_variation(ramp).item() == pytest.approx(0.3**2 + 0.05**2, rel=1e-5)
    # Only the two plane axes count: varying across channels or planes adds nothing.
    across = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(2, 3, 4, 8, 10)
    assert total_variation(across).item() == 0.0


def loss_inputs(seed: int = 0, objects: int = 2, views: int = 2, side: int = 32, perturbed: bool = True):
    generator = torch.Generator().manual_seed(seed)
    target_rgb = torch.rand(objects, views, 3, side, side, generator=generator)
    target_mask = (torch.rand(objects, views, 1, side, side, generator=generator) > 0.5).float()
    triplanes = torch.full((objects, 3, 4, 8, 8), 0.25)
    rendered_rgb, rendered_opacity = target_rgb.clone(), target_mask.clone()
    if perturbed:
        rendered_rgb = (rendered_rgb + 0.2 * torch.randn(rendered_rgb.shape, generator=generator)).clamp(0, 1)
        rendered_opacity = torch.rand(rendered_opacity.shape, generator=generator)
        triplanes = triplanes + torch.randn(triplanes.shape, generator=generator)
    return rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes


def test_every_term_is_zero_for_a_perfect_reconstruction(squeeze_lpips):
    loss = ReconstructionLoss(random_lpips_config(mse_weight=2.0, opacity_weight=0.5, tv_weight=0.1), squeeze_lpips)
    total, terms = loss(*loss_inputs(perturbed=False), pixel_loss=True)
    assert set(terms) == {"lpips", "mse", "opacity", "tv", "total"}
    assert all(abs(value) < 1e-6 for value in terms.values()), terms
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_terms_are_non_zero_and_the_total_is_their_weighted_sum(squeeze_lpips):
    weights = {"lpips": 1.5, "mse": 2.0, "opacity": 0.5, "tv": 0.1}
    config = random_lpips_config(lpips_weight=1.5, mse_weight=2.0, opacity_weight=0.5, tv_weight=0.1)
    loss = ReconstructionLoss(config, squeeze_lpips)
    rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes = loss_inputs()
    total, terms = loss(rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes, pixel_loss=True)
    assert all(terms[name] > 1e-4 for name in weights), terms
    assert total.item() == pytest.approx(sum(weights[name] * terms[name] for name in weights), rel=1e-5)
    assert terms["total"] == pytest.approx(total.item(), rel=1e-6)
    # Each term is what it says: the unweighted definitions, LPIPS on [-1, 1] inputs averaged over views.
    assert terms["mse"] == pytest.approx(((rendered_rgb - target_rgb) ** 2).mean().item(), rel=1e-5)
    assert terms["opacity"] == pytest.approx(((rendered_opacity - target_mask) ** 2).mean().item(), rel=1e-5)
    assert terms["tv"] == pytest.approx(total_variation(triplanes).item(), rel=1e-6)
    with torch.no_grad():
        direct = squeeze_lpips(rendered_rgb.flatten(0, 1) * 2 - 1, target_rgb.flatten(0, 1) * 2 - 1).mean().item()
    assert terms["lpips"] == pytest.approx(direct, rel=1e-5)


def test_pixel_loss_off_excludes_the_mse_term(squeeze_lpips):
    loss = ReconstructionLoss(random_lpips_config(mse_weight=3.0), squeeze_lpips)
    inputs = loss_inputs()
    total_on, terms_on = loss(*inputs, pixel_loss=True)
    total_off, terms_off = loss(*inputs, pixel_loss=False)
    assert "mse" in terms_on and "mse" not in terms_off
    assert total_on.item() - total_off.item() == pytest.approx(3.0 * terms_on["mse"], rel=1e-4)


def test_zero_weight_terms_are_skipped_and_lpips_is_not_built_without_weight():
    # No backbone path and no random backbone: building LPIPS would raise, so it must not be built.
    loss = ReconstructionLoss(ReconLossConfig(lpips_weight=0.0, tv_weight=0.0))
    assert loss.lpips is None
    total, terms = loss(*loss_inputs(), pixel_loss=True)
    assert set(terms) == {"mse", "opacity", "total"}
    assert total.item() == pytest.approx(terms["mse"] + 0.5 * terms["opacity"], rel=1e-5)


def test_gradients_reach_the_renders_and_the_triplanes(squeeze_lpips):
    loss = ReconstructionLoss(random_lpips_config(), squeeze_lpips)
    loss.train()
    assert not loss.lpips.training  # dropout in lpips' heads stays off
    rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes = loss_inputs()
    for tensor in (rendered_rgb, rendered_opacity, triplanes):
        tensor.requires_grad_(True)
    total, _ = loss(rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes, pixel_loss=False)
    total.backward()
    for tensor in (rendered_rgb, rendered_opacity, triplanes):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in loss.parameters())  # LPIPS is frozen


def test_loss_rejects_mismatched_shapes(squeeze_lpips):
    loss = ReconstructionLoss(random_lpips_config(), squeeze_lpips)
    rendered_rgb, rendered_opacity, target_rgb, target_mask, triplanes = loss_inputs()
    with pytest.raises(ValueError, match="rendered_rgb"):
        loss(rendered_rgb[:, :1], rendered_opacity, target_rgb, target_mask, triplanes, pixel_loss=True)


# ------------------------------------------------------------------------------ LPIPS construction


def test_missing_backbone_path_is_a_config_error():
    with pytest.raises(ConfigError, match="losses.lpips_backbone_path"):
        build_lpips(ReconLossConfig())
    with pytest.raises(ConfigError, match="losses.lpips_backbone_path"):
        ReconstructionLoss(ReconLossConfig(lpips_net="squeeze"))


def test_random_backbone_warns_that_the_loss_is_not_perceptual():
    with pytest.warns(UserWarning, match="random.*not a perceptual"):
        module = build_lpips(random_lpips_config())
    assert not module.training and not any(parameter.requires_grad for parameter in module.parameters())


@pytest.mark.parametrize(
    ("net", "arch", "suffix"),
    [("squeeze", "squeezenet1_1", ".safetensors"), ("squeeze", "squeezenet1_1", ".pth"), ("alex", "alexnet", ".pth")],
)
def test_backbone_weights_are_loaded_from_a_torchvision_state_dict(tmp_path, net, arch, suffix):
    import lpips as lpips_package
    from safetensors.torch import save_file

    state = torchvision_state(arch, seed=123)
    path = tmp_path / f"{arch}{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)

    torch.manual_seed(999)  # lpips' own (random) backbone init differs from the file's
    module = build_lpips(ReconLossConfig(lpips_net=net, lpips_backbone_path=str(path)))
    loaded = module.net.state_dict()
    checked = 0
    for key, value in loaded.items():
        _, index, rest = key.split(".", 2)  # slice<k>.<features index>.<param>
        assert torch.equal(value, state[f"features.{index}.{rest}"]), key
        checked += 1
    assert checked == sum(key.startswith("features.") for key in state)
    # The calibrated linear heads are lpips' shipped ones, untouched.
    import os

    heads = torch.load(
        os.path.join(os.path.dirname(lpips_package.__file__), "weights", "v0.1", f"{net}.pth"), map_location="cpu", weights_only=True
    )
    for key, value in heads.items():
        assert torch.equal(module.state_dict()[key], value), key
    assert not module.training and not any(parameter.requires_grad for parameter in module.parameters())


def test_bad_backbone_files_are_config_errors(tmp_path):
    state = torchvision_state("squeezenet1_1", seed=0)
    config = lambda path: ReconLossConfig(lpips_net="squeeze", lpips_backbone_path=str(path))  # noqa: E731

    with pytest.raises(ConfigError, match="no such file"):
        build_lpips(config(tmp_path / "absent.pth"))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="cannot read"):
        build_lpips(config(garbage))

    missing = dict(state)
    del missing["features.3.squeeze.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"missing features\.3\.squeeze\.weight"):
        build_lpips(config(tmp_path / "missing.pth"))

    # A different architecture (alexnet's features for the squeeze backbone): shapes mismatch.
    torch.save(torchvision_state("alexnet", seed=0), tmp_path / "alexnet.pth")
    with pytest.raises(ConfigError, match="not a torchvision squeezenet1_1 state dict"):
        build_lpips(config(tmp_path / "alexnet.pth"))

    torch.save({"weights": [1, 2, 3]}, tmp_path / "not_tensors.pth")
    with pytest.raises(ConfigError, match="state dict of tensors"):
        build_lpips(config(tmp_path / "not_tensors.pth"))


# ------------------------------------------------------------------------------------------ plots


def open_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def test_jsonl_round_trip_tolerates_a_cut_last_line(tmp_path):
    path = tmp_path / "logs" / "train.jsonl"
    append_jsonl(path, {"step": 1, "loss": np.float32(0.5), "stage": "128px"})
    append_jsonl(path, {"step": 2, "loss": torch.tensor(0.25), "psnr": float("inf")})
    with open(path, "a") as handle:
        handle.write('{"step": 3, "lo')  # a crash mid-write
    records = read_jsonl(path)
    assert records == [{"step": 1, "loss": 0.5, "stage": "128px"}, {"step": 2, "loss": 0.25, "psnr": float("inf")}]


def test_plot_curves_draws_one_panel_per_key(tmp_path):
    records = [{"step": step, "loss": 1.0 / step, "lpips": 0.5 / step, "stage": "a"} for step in range(1, 20)]
    records += [{"step": 20, "psnr": 21.0}, {"step": 25, "psnr": 23.5, "loss": float("nan")}, {"no_step": 1, "loss": 3.0}]
    one = open_png(plot_curves(records, tmp_path / "one.png", keys=["loss"]))
    default = open_png(plot_curves(records, tmp_path / "curves" / "all.png"))  # loss, lpips, psnr
    four = open_png(plot_curves(records, tmp_path / "four.png", keys=["loss", "lpips", "psnr", "never_logged"]))
    assert default[0] == 3 * one[0] and default[1] == one[1]  # three panels side by side
    assert four[0] == default[0] and four[1] == 2 * one[1]  # a second row
    assert not [path for path in tmp_path.rglob("*") if path.name.startswith(".")]  # written atomically


def test_stage_switches_are_marked_and_titles_say_which_way_is_better(tmp_path):
    records = [{"step": step, "loss": 1.0 / step, "stage": "32px" if step <= 40 else "48px"} for step in range(10, 130, 10)]
    records.insert(0, {"step": 0, "psnr": 12.0})  # no stage: ignored
    assert stage_switches(list(reversed(records))) == [(50.0, "48px")]
    assert stage_switches([{"step": 1, "stage": "a"}, {"step": 2, "stage": "a"}]) == []
    assert (metric_title("psnr"), metric_title("lpips"), metric_title("loss_rgb"), metric_title("lr")) == (
        "psnr ↑",
        "lpips ↓",
        "loss_rgb ↓",
        "lr",
    )

    def pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).astype(int)

    marked = pixels(plot_curves(records, tmp_path / "marked.png", keys=["loss"]))
    unmarked = pixels(plot_curves([{k: v for k, v in r.items() if k != "stage"} for r in records], tmp_path / "plain.png", keys=["loss"]))
    assert marked.shape == unmarked.shape
    changed_columns = np.flatnonzero((np.abs(marked - unmarked).sum(axis=-1) > 0).any(axis=0))
    # The dashed line (and its label beside it) is drawn in one place, right of the first stage.
    assert 0 < changed_columns.size and changed_columns.min() > marked.shape[1] // 3


def test_image_grid_lays_out_labelled_rows(tmp_path):
    rng = np.random.default_rng(0)
    uint8_image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    float_image = rng.random((16, 20, 3))
    gray = rng.random((12, 12))
    rows = [[uint8_image, float_image, gray], [float_image, uint8_image]]  # ragged, mixed types
    plain = image_grid(rows, tmp_path / "plain.png")
    width, height = open_png(plain)
    pad = GRID_PADDING
    assert (width, height) == (3 * (20 + pad) + pad, 2 * (16 + pad) + pad)
    with Image.open(plain) as image:
        pixels = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pixels[pad : pad + 16, pad : pad + 20], uint8_image)

    labelled = image_grid(
        rows, tmp_path / "grids" / "labelled.png", row_labels=["object 0", "object 1"], column_labels=["input", "predicted", "true"]
    )
    labelled_width, labelled_height = open_png(labelled)
    assert labelled_width > width and labelled_height > height
    with pytest.raises(ValueError, match="row labels"):
        image_grid(rows, tmp_path / "bad.png", row_labels=["only one"])
    assert not [path for path in tmp_path.rglob("*") if path.name.startswith(".")]


def test_plots_and_metrics_modules_do_not_import_ray():
    import subprocess
    import sys

    modules = "vf3d.image_metrics, vf3d.plots, vf3d.models.lpips_network, vf3d.training.losses"
    code = f"import sys, {modules}; assert 'ray' not in sys.modules and 'deepspeed' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0

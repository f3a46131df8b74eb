"""Imported release weights rendered by vf3d vs the released renderer's arithmetic.

A model in the released VFusion3D layout (random weights: the real ones are not redistributable)
is written as a release-format safetensors file, imported with `vf3d.models.release_weights.import_checkpoint`,
given a decoder density output scaled to swing from empty to opaque as a trained one does, fed a real photo, and its triplanes rendered with fixed, uniform samples (no importance pass, no
jitter) three ways, side by side:

- A: vf3d's renderer (raw densities averaged over each interval, then activated: the release's order,
  docs/vfusion3d.md#rendering-order);
- B: the order vf3d used before (each sample activated, then averaged);
- reference: an independent re-implementation of the released ray marcher's arithmetic (the one
  tests/unit/test_release_fidelity.py checks vf3d against).

It also reports how far the encoder's two position-embedding interpolations ("scale_factor", what
the release was trained with, vs transformers >= 4.46's "size"; docs/vfusion3d.md#position-embeddings)
move the triplanes.

  python bench/release_fidelity.py                  # release-size model (452M parameters; ~2 min on 2 CPUs)
  python bench/release_fidelity.py --preset debug   # seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image
from report import Row, log, markdown_table, write_json
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from test_release_fidelity import release_render  # noqa: E402  (the independent reference)

from vf3d import cameras  # noqa: E402
from vf3d import config as config_lib
from vf3d.models.reconstructor import Reconstructor  # noqa: E402
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS
from vf3d.models.reconstructor.renderer import intersect_box  # noqa: E402
from vf3d.models.release_weights import export_checkpoint, import_checkpoint, load_reconstructor  # noqa: E402
from vf3d.preprocess import prepare_image  # noqa: E402


def render_three_ways(model: Reconstructor, planes: torch.Tensor, size: int, samples: int) -> dict[str, dict[str, torch.Tensor]]:
    """Two turntable views of `planes` at size² with `samples` uniform samples per ray →
    {"new" | "old" | "reference": {"rgb": [R, 3], "opacity": [R, 1]}}."""
    model.renderer.config.num_coarse_samples = samples
    model.renderer.config.num_fine_samples = 0
    render_cameras = cameras.render_camera_vector(cameras.turntable_poses(2)).unsqueeze(0)
    with torch.no_grad():
        new = model.render(planes, render_cameras, size, deterministic=True)
        activation = model.renderer.density_activation
        model.renderer.density_activation = None  # the old order: the field hands over densities
        try:
            old = model.renderer(lambda points: model.query_points(planes, points), render_cameras, size, size, deterministic=True)
        finally:
            model.renderer.density_activation = activation
        origins, directions = cameras.generate_rays(render_cameras, size, size)
        origins, directions = origins.reshape(1, -1, 3), directions.reshape(1, -1, 3)
        near, far, _ = intersect_box(origins, directions, 1.0)
        depths = (near[..., None] + (far - near)[..., None] * torch.linspace(0.0, 1.0, samples)).unsqueeze(-1)
        rgb, _, opacity = release_render(model, planes, origins, directions, depths)
    flat = lambda out: {"rgb": out.rgb.permute(0, 1, 3, 4, 2).reshape(-1, 3), "opacity": out.opacity.reshape(-1, 1)}  # noqa: E731
    return {"new": flat(new), "old": flat(old), "reference": {"rgb": rgb.reshape(-1, 3), "opacity": opacity.reshape(-1, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vfusion3d", choices=sorted(RECONSTRUCTOR_PRESETS), help="architecture of the imported model")
    parser.add_argument("--size", type=int, default=64, help="side of the two rendered views")
    parser.add_argument("--samples", type=int, default=64, help="uniform samples per ray")
    parser.add_argument("--quick", action="store_true", help="the debug architecture (seconds)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    preset = "debug" if args.quick else args.preset
    torch.manual_seed(0)
    config = RECONSTRUCTOR_PRESETS[preset]()
    with tempfile.TemporaryDirectory(prefix="vf3d-fidelity-") as work:
        log(f"building a random {preset!r} model and writing it in the released layout")
        source = export_checkpoint(Reconstructor(config).eval(), Path(work) / "release.safetensors")
        imported = import_checkpoint(
            source, Path(work) / "imported", "vfusion3d", overrides=None if preset == "vfusion3d" else config_lib.to_dict(config)
        )
        model = load_reconstructor(imported)
    log(f"imported: position_interpolation={model.config.encoder.position_interpolation}")
    with torch.no_grad():
        # Random decoders give nearly constant densities, where the order of averaging and
        # activation hardly matters; a trained field swings from empty to opaque. Scale the
        # density output so raw densities cross softplus's bend as a trained model's do.
        model.decoder.layers[-1].weight[0] *= 60.0
        model.decoder.layers[-1].bias[0] = -4.0
    image = prepare_image(Image.fromarray(data.astronaut()), model.config.encoder.image_size, mask_method="none")[None]
    source_camera = cameras.model_source_camera(model.config)[None]
    with torch.no_grad():
        planes = model.encode(image, source_camera)
    views = render_three_ways(model, planes, args.size, args.samples)
    reference = views["reference"]
    rows, report = [], {"preset": preset, "size": args.size, "samples": args.samples}
    for name in ("rgb", "opacity"):
        new = (views["new"][name] - reference[name]).abs()
        old = (views["old"][name] - reference[name]).abs()
        report[name] = {
            "new_max": new.max().item(),
            "new_mean": new.mean().item(),
            "old_max": old.max().item(),
            "old_mean": old.mean().item(),
        }
        for statistic in ("max", "mean"):
            a, b = getattr(new, statistic)().item(), getattr(old, statistic)().item()
            ratio = f"{b / a:.0f}×" if a > 0 else "new exact"
            rows.append(
                Row(
                    f"{name} vs the release's arithmetic: |new − ref| vs |old − ref| ({statistic})",
                    f"{a:.2e}",
                    f"{b:.2e}",
                    ratio,
                    "new ≈ 0 (float rounding)",
                )
            )
    with torch.no_grad():
        modern = Reconstructor(config_lib.merge(model.config, {"encoder": {"position_interpolation": "size"}})).eval()
        modern.load_state_dict(model.state_dict())
        modern_planes = modern.encode(image, source_camera)
    relative = ((modern_planes - planes).norm() / planes.norm()).item()
    report["position_interpolation_relative_triplane_change"] = relative
    rows.append(
        Row(
            "triplanes: scale_factor vs size position interpolation (relative L2 change)",
            "scale_factor",
            "size",
            f"{relative:.2e}",
            "release trained with scale_factor",
        )
    )
    print(markdown_table(rows))
    if args.json:
        write_json(args.json, report, rows)


if __name__ == "__main__":
    main()

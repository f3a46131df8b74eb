"""`vf3d demo`: the pipeline at `debug` size, end to end, with a summary of each stage.

For now the pipeline is: real sample meshes (shipped inside pybullet) → orbit shards on a local
Ray cluster → the `debug` video model, with a small VAE fitted to those renders (`fit_demo_vae`), fine-tuned on
the renders of the objects not held out (Ray Train + DeepSpeed ZeRO-2, 2 workers) → synthetic
orbits started from other views of those objects (Ray Data, elastic actor pools, quality filter)
→ the `debug` reconstructor trained on the kept synthetic orbits, then on the renders (Ray Train +
DeepSpeed, stage schedule), validated on the held-out renders
→ an evaluation report on the held-out objects (PSNR/SSIM/LPIPS on novel views, Chamfer distance
and F-score against the true meshes) → the image-to-3D endpoint on Ray Serve, sent over HTTP a view
of a held-out object (the result: something the models could learn) and a real photo (shipped
inside scikit-image, so it works offline) → a GLB, a turntable MP4 and a two-view picture of each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vf3d import config as config_lib
from vf3d.evaluation.config import EVALUATE_PRESETS
from vf3d.serving.config import SERVE_PRESETS
from vf3d.synthesis.config import RENDER_ASSETS_PRESETS, SYNTHESIZE_PRESETS
from vf3d.training.config import FINETUNE_VIDEO_PRESETS, TRAIN_RECON_PRESETS

DEMO_ASSETS = 8
"""Sample meshes rendered into orbit shards (the named pybullet objects first)."""
DEMO_HELD_OUT = 3
"""Rendered objects train-recon holds out for validation and the evaluation report."""
DEMO_PHOTO = "astronaut"
"""A real photo from skimage.data (astronaut, chelsea, coffee and rocket ship with the package)."""
DEMO_VAE_DIR = Path(__file__).resolve().parent / "models" / "video" / "demo_vae"
"""The small Wan VAE fitted to the demo's renders (`fit_demo_vae`), which the demo's video model
loads instead of a random one (`VideoModelConfig.vae_path`)."""
DEMO_VIDEO_STEPS = 100
"""Fine-tuning steps of the demo's video model (2 workers × 1 orbit per step)."""
DEMO_START_VIEWS = (4, 8, 12)
"""Views of each training render the demo's synthesis starts orbits from (new start angles)."""


def orbit_videos(orbits_dir: Path, resolution: int):
    """Every orbit in `orbits_dir` as a closed video [N, 3, V + 1, r, r] in [0, 1] at `resolution`
    (area-resized), what the video model's VAE encodes."""
    import torch
    import torch.nn.functional as F

    from vf3d.data import shards
    from vf3d.models.video.conditioning import close_orbit

    frames = torch.stack([record["frames"] for record in shards.iter_records(orbits_dir)])
    frames = F.interpolate(frames.flatten(0, 1), size=resolution, mode="area").unflatten(0, frames.shape[:2])
    return close_orbit(frames).transpose(1, 2)


def fit_demo_vae(orbits_dir: Path, out_dir: Path, steps: int = 300, log=print) -> dict:
    """The recipe of the VAE in DEMO_VAE_DIR: a Wan VAE (16 base channels, 8 latent channels, Wan's
    4× spatial and 4× temporal compression; 201k parameters) fitted, seeded, at the debug video
    model's resolution (32²) to the demo's training renders: the held-out objects are not among
    them. To refit after changing the renders, after a `make demo`:
    `python -c "from vf3d.demo import fit_demo_vae; fit_demo_vae('demo-output/training-orbits', 'platform/vf3d/models/video/demo_vae')"`.
    Returns `fit_vae`'s summary."""
    import torch
    from diffusers import AutoencoderKLWan

    from vf3d.models.video.config import VIDEO_MODEL_PRESETS
    from vf3d.models.video.vae import fit_vae

    videos = orbit_videos(Path(orbits_dir), VIDEO_MODEL_PRESETS["debug"]().resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(
            base_dim=16,
            z_dim=8,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[True, True],
            latents_mean=[0.0] * 8,
            latents_std=[1.0] * 8,
            scale_factor_temporal=4,
            scale_factor_spatial=4,
        )
    fitted = fit_vae(vae, videos, steps, log=log)
    vae.save_pretrained(out_dir, safe_serialization=True)
    log(
        f"VAE fitted to {len(videos)} orbits in {fitted['seconds']:.0f}s: PSNR {fitted['psnr']:.2f} dB (blank {fitted['blank_psnr']:.2f}); saved to {out_dir}"
    )
    return fitted


def split_held_out(orbits_dir: Path, training_dir: Path, count: int, seed: int) -> list[str]:
    """Choose the `count` held-out renders the way train-recon does (`holdout_ids`) and copy the
    other orbits into `training_dir`: the video model never sees a held-out object. Returns the ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from vf3d.data import shards
    from vf3d.training.recon import holdout_ids

    table = shards.read_table(orbits_dir)
    held_out = holdout_ids(pc.unique(table["id"]).to_pylist(), count, seed)
    shards.OrbitShardWriter(training_dir).write(table.filter(pc.invert(pc.is_in(table["id"], pa.array(held_out, pa.string())))))
    return held_out


def write_view_inputs(orbits_dir: Path, path: Path, views=DEMO_START_VIEWS) -> Path:
    """Synthesis inputs from renders: for each orbit and each of `views`, that view as the first
    frame (PNG, on white), the orbit's prompt and its elevation. One Parquet row each."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from vf3d.data import shards

    rows = []
    for record in shards.iter_records(orbits_dir):
        for view in views:
            image = io.BytesIO()
            Image.fromarray((record["frames"][view].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(image, format="PNG")
            identifier = f"{record['id']}-from-view-{view:02d}"
            rows.append(
                {"id": identifier, "prompt": record["prompt"] or "", "image": image.getvalue(), "elevation": float(record["elevation"])}
            )
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("image", pa.binary()), ("elevation", pa.float64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_demo_photo(path: Path, name: str = DEMO_PHOTO) -> Path:
    """Save a photo shipped with scikit-image as PNG at `path`."""
    import skimage.data
    from PIL import Image

    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


def evaluate_held_out(model_dir: Path, data_dir: Path, held_out: list[str], assets_dir: Path, out_dir: Path, log=print) -> dict:
    """`vf3d evaluate --preset debug` on the orbits train-recon held out (random CLIP and LPIPS
    weights, as the report says: no download here). Returns the stage's summary."""
    from vf3d.evaluation.evaluate import evaluate

    config = config_lib.preset(EVALUATE_PRESETS, "debug")
    document = evaluate([model_dir], data_dir, out_dir, config, assets_dir=assets_dir, ids=held_out or None, log=log)
    (name,) = document["aggregate"]
    means = {key: value["mean"] for key, value in document["aggregate"][name].items() if value["mean"] is not None}
    return {
        "output": str(out_dir / "report.md"),
        "objects": len(document["objects"]),
        **{key: round(value, 4) for key, value in means.items() if key in ("psnr", "ssim", "lpips", "chamfer", "fscore")},
    }


def write_held_out_view(data_dir: Path, object_id: str, path: Path) -> tuple[Path, str]:
    """The first view of the held-out orbit `object_id` in `data_dir` as an RGBA PNG (the object
    cut out on a transparent background, as a client's masked photo would be). Returns the path and
    the object's asset name."""
    import numpy as np
    from PIL import Image

    from vf3d.data.training_input import read_orbits_by_id

    orbits = read_orbits_by_id(data_dir, [object_id])
    if not orbits:
        raise RuntimeError(f"held-out object {object_id} is not in {data_dir}")
    (orbit,) = orbits
    rgba = np.concatenate([orbit["frames"][0].numpy(), orbit["masks"][0].numpy()], axis=0).transpose(1, 2, 0)
    Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA").save(path)
    return path, Path(orbit["asset"] or object_id).stem


RESULT_VIEW_SIZE = 320
"""Side of each of the two views `render_result_views` draws of a GLB."""


def render_result_views(mesh_path: Path, image_path: Path) -> Path:
    """Draw the GLB at `mesh_path` from two sides (azimuth 30° and 210°, 20° up, on white) into one
    PNG, with the same headless renderer render-assets uses: a look at the result without a viewer."""
    import numpy as np
    from PIL import Image

    from vf3d import cameras
    from vf3d.data.assets import load_asset
    from vf3d.data.orbit_renderer import OrbitRenderer

    poses = cameras.orbit_poses(2, elevation_deg=20.0, azimuth_offset_deg=30.0)
    with OrbitRenderer(RESULT_VIEW_SIZE, samples=4) as renderer:
        rgba = renderer.render(load_asset(mesh_path), cameras.render_camera_vector(poses))
    alpha = rgba[..., 3:].astype(np.float32) / 255
    on_white = (rgba[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    Image.fromarray(np.concatenate(list(on_white), axis=1)).save(image_path)
    return image_path


def serve_images(model_dir: Path, inputs: dict[str, Path], out: Path, log=print) -> dict:
    """Deploy the endpoint for `model_dir` on the connected Ray cluster (debug serve preset, a free
    port), send each image of `inputs` (name → PNG) to /v1/image-to-3d and /v1/turntable as any
    client would, write the answers to `out/NAME.glb` and `out/NAME.mp4` with a two-view picture
    of each mesh (`out/NAME-views.png`), and shut the endpoint down. Returns the stage's summary."""
    import os
    import socket

    import requests
    from ray import serve

    from vf3d.serving.app import API_KEY_ENV, build_application, start_endpoint

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = config_lib.merge(config_lib.preset(SERVE_PRESETS, "debug"), {"port": port})
    url = start_endpoint(build_application(model_dir, config), config, log=log)
    headers = {"Authorization": f"Bearer {os.environ[API_KEY_ENV]}"} if os.environ.get(API_KEY_ENV) else {}
    answers = {}
    try:
        for name, image in inputs.items():
            data = image.read_bytes()
            mesh = requests.post(f"{url}/v1/image-to-3d", data=data, headers=headers, timeout=config.request_timeout_s)
            if mesh.status_code != 200:
                raise RuntimeError(f"the endpoint answered {mesh.status_code} for {image.name}: {mesh.text[:300]}")
            (out / f"{name}.glb").write_bytes(mesh.content)
            video = requests.post(f"{url}/v1/turntable", data=data, headers=headers, timeout=config.request_timeout_s)
            if video.status_code != 200:
                raise RuntimeError(f"the endpoint answered {video.status_code} for {image.name}: {video.text[:300]}")
            (out / f"{name}.mp4").write_bytes(video.content)
            log(
                f"serve: {image.name} → a {len(mesh.content) / 1e6:.1f} MB GLB ({int(mesh.headers['x-vf3d-vertices']):,} vertices) "
                f"in {mesh.headers['x-vf3d-seconds']}s and a turntable in {video.headers['x-vf3d-seconds']}s"
            )
            answers[name] = {
                "input": str(image),
                "mesh": str(out / f"{name}.glb"),
                "video": str(out / f"{name}.mp4"),
                "views": str(render_result_views(out / f"{name}.glb", out / f"{name}-views.png")),
                "vertices": int(mesh.headers["x-vf3d-vertices"]),
            }
        health = requests.get(f"{url}/healthz", timeout=60).json()
    finally:
        serve.shutdown()
    return {"url": url, "images_encoded": health["images_encoded"], "answers": answers}


def run_demo(out: Path, log=print) -> dict:
    """Run every available stage at `debug` size under `out`; returns the summary it prints."""
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    started = time.perf_counter()

    stage_start = time.perf_counter()
    from vf3d.data.assets import gather_sample_assets
    from vf3d.ray_runtime import ray_cluster
    from vf3d.synthesis.render_assets import render_assets
    from vf3d.synthesis.synthesize import synthesize
    from vf3d.training.recon import train_recon
    from vf3d.training.video import finetune_video

    assets = gather_sample_assets(out / "assets", limit=DEMO_ASSETS)
    with ray_cluster(log=log):
        rendered = render_assets(out / "assets", out / "orbits", config_lib.preset(RENDER_ASSETS_PRESETS, "debug"), log=log)
        stages["render-assets"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "orbits"),
            "assets": len(assets),
            "orbits": rendered["orbits_total"],
            "errors": rendered["errors_total"],
            "frames_per_second": rendered["frames_per_second"],
        }
        stage_start = time.perf_counter()
        recon_config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
        # Three rendered objects are held out (validation, the evaluation report, the served view)
        # and kept from every model: the video model fine-tunes on the other five, synthesis
        # starts from views of those five, and train-recon validates on the three.
        held_out = split_held_out(out / "orbits", out / "training-orbits", DEMO_HELD_OUT, recon_config.training.run.seed)
        video_config = config_lib.preset(FINETUNE_VIDEO_PRESETS, "debug")
        video_config.training.run.storage_path = str((out / "video-runs").resolve())
        video_config.training.run.max_steps = DEMO_VIDEO_STEPS
        # A random VAE decodes everything to noise; this one was fitted to these renders.
        video_config.model.vae_path = str(DEMO_VAE_DIR)
        tuned = finetune_video(out / "training-orbits", out / "video-model", video_config, log=log)
        stages["finetune-video"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "video-model"),
            "data": f"{out / 'training-orbits'} (the renders minus the held-out objects)",
            "eval_loss": f"{tuned['initial_eval_loss']:.3f} -> {tuned['final_eval_loss']:.3f}",
            "steps": tuned["steps"],
        }
        stage_start = time.perf_counter()
        inputs = write_view_inputs(out / "training-orbits", out / "synthesis-inputs.parquet")
        synthesize_config = config_lib.preset(SYNTHESIZE_PRESETS, "debug")
        # The demo's video model trains without prompt dropout: no unconditional branch to guide against.
        synthesize_config.generation.guidance_scale = 1.0
        synthesized = synthesize(inputs, out / "video-model", out / "synthetic", synthesize_config, log=log)
        stages["synthesize"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "synthetic"),
            "inputs": synthesized["inputs"],
            "kept": synthesized["kept_total"],
            "rejected": synthesized["rejected_total"],
            "errors": synthesized["errors_total"],
            "videos_per_second": synthesized["videos_per_second"],
        }
        stage_start = time.perf_counter()
        # Should the filter keep nothing (a changed model or renderer), the synthetic stage trains
        # on the training renders instead, and says so.
        synthetic = out / "synthetic" if synthesized["kept_total"] else out / "training-orbits"
        if not synthesized["kept_total"]:
            log("train-recon: no synthetic orbit passed the filter, so the synthetic stage trains on the renders too")
        recon_config.training.run.storage_path = str((out / "recon-runs").resolve())
        recon_config.validation.num_objects = DEMO_HELD_OUT
        recon_config.validation.held_out_from = "3d"
        trained = train_recon(synthetic, out / "orbits", out / "reconstructor", recon_config, log=log)
        if sorted(trained["held_out"]) != sorted(held_out):
            raise RuntimeError(f"train-recon held out {trained['held_out']}, the demo kept {held_out} from the video model")
        stages["train-recon"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "reconstructor"),
            "synthetic_stage_data": str(synthetic),
            "3d_stage_data": f"{out / 'orbits'} minus the held-out objects",
            "validated_on": f"held-out renders {', '.join(sorted(held_out))}",
            "novel_view_psnr": f"{trained['first_validation']['psnr']:.2f} -> {trained['last_validation']['psnr']:.2f}",
            "steps": trained["steps"],
        }

        stage_start = time.perf_counter()
        stages["evaluate"] = evaluate_held_out(
            out / "reconstructor", out / "orbits", trained["held_out"], out / "assets", out / "evaluation", log=log
        )
        stages["evaluate"]["seconds"] = time.perf_counter() - stage_start
        stage_start = time.perf_counter()
        # The result is an object the reconstructor could learn: a view of one it never trained
        # on, from the same renderer. The real photo shows the endpoint on a client's picture, far
        # outside what 5 training objects at 48 px can teach.
        held_out_view, held_out_name = write_held_out_view(out / "orbits", trained["held_out"][0], out / "held-out-view.png")
        photo = write_demo_photo(out / f"{DEMO_PHOTO}.png")
        served = serve_images(out / "reconstructor", {"result": held_out_view, DEMO_PHOTO: photo}, out, log=log)
        stages["serve"] = {
            "url": served["url"],
            "result": f"{out / 'result.glb'} from a view of held-out object {held_out_name!r} (never trained on)",
            "photo": f"{out / (DEMO_PHOTO + '.glb')} from {photo.name}",
            "pictures": ", ".join(answer["views"] for answer in served["answers"].values()),
            "vertices": "/".join(f"{answer['vertices']:,}" for answer in served["answers"].values()),
            "seconds": time.perf_counter() - stage_start,
        }

    summary = {"total_seconds": time.perf_counter() - started, "stages": stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, stage in stages.items():
        details = ", ".join(f"{key}={value}" for key, value in stage.items() if key != "seconds")
        log(f"[{name}] {stage['seconds']:.1f}s  {details}")
    log(
        f"demo finished in {summary['total_seconds']:.1f}s; GLB: {out / 'result.glb'}  MP4: {out / 'result.mp4'}  "
        f"pictures: {out / 'result-views.png'}  summary: {out / 'summary.json'}"
    )
    return summary

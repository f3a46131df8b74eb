"""`vf3d demo`: the pipeline at `debug` size, end to end, with a summary of each stage.

For now the pipeline is: real sample meshes (shipped inside pybullet) → orbit shards on a local
Ray cluster → the `debug` video model fine-tuned on them (Ray Train + DeepSpeed ZeRO-2, 2 workers)
→ synthetic orbits from prompts and a photo (Ray Data, elastic actor pools, quality filter)
→ the `debug` reconstructor trained on them and the renders (Ray Train + DeepSpeed, stage schedule)
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
DEMO_PROMPTS = [
    "a wooden chair",
    "a red toy car",
    "a ceramic mug",
    "a yellow rubber duck",
    "a potted cactus",
    "a leather boot",
    "a brass desk lamp",
    "a teddy bear",
    "a blue vase",
    "a robot toy",
    "a soccer ball",
    "a stack of books",
]
"""Prompts the demo synthesises orbits for (plus one photo given as its own first frame)."""


def write_demo_prompts(path: Path) -> Path:
    """The demo's synthesis input: one Parquet row per prompt, plus a photo row (no prompt needed)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import skimage.data
    from PIL import Image

    photo = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(photo, format="PNG")
    rows = [{"id": f"prompt-{index:02d}", "prompt": prompt, "image": None} for index, prompt in enumerate(DEMO_PROMPTS)]
    rows.append({"id": "photo-chelsea", "prompt": "a cat", "image": photo.getvalue()})
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("image", pa.binary())])), path
    )
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
        video_config = config_lib.preset(FINETUNE_VIDEO_PRESETS, "debug")
        video_config.training.run.storage_path = str((out / "video-runs").resolve())
        tuned = finetune_video(out / "orbits", out / "video-model", video_config, log=log)
        stages["finetune-video"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "video-model"),
            "eval_loss": f"{tuned['initial_eval_loss']:.3f} -> {tuned['final_eval_loss']:.3f}",
            "steps": tuned["steps"],
        }
        stage_start = time.perf_counter()
        prompts = write_demo_prompts(out / "prompts.parquet")
        synthesized = synthesize(prompts, out / "video-model", out / "synthetic", config_lib.preset(SYNTHESIZE_PRESETS, "debug"), log=log)
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
        # A debug video model fine-tuned for seconds makes blobs the filter mostly rejects; the
        # reconstructor then trains its synthetic stage on the renders instead (and says so).
        synthetic = out / "synthetic" if synthesized["kept_total"] else out / "orbits"
        if not synthesized["kept_total"]:
            log("train-recon: no synthetic orbit passed the filter, so the synthetic stage trains on the renders too")
        recon_config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
        recon_config.training.run.storage_path = str((out / "recon-runs").resolve())
        # Three of the rendered objects are held out (never trained on): validation curves and the
        # evaluation report then average over several objects instead of showing one.
        recon_config.validation.num_objects = DEMO_HELD_OUT
        trained = train_recon(synthetic, out / "orbits", out / "reconstructor", recon_config, log=log)
        stages["train-recon"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "reconstructor"),
            "synthetic_data": str(synthetic),
            "novel_view_psnr": f"{trained['first_validation']['psnr']:.2f} -> {trained['last_validation']['psnr']:.2f}",
            "steps": trained["steps"],
        }

        stage_start = time.perf_counter()
        stages["evaluate"] = evaluate_held_out(
            out / "reconstructor", synthetic, trained["held_out"], out / "assets", out / "evaluation", log=log
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

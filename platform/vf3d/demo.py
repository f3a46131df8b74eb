"""`vf3d demo`: the pipeline at `debug` size, end to end, with a summary of each stage.

For now the pipeline is: real sample meshes (shipped inside pybullet) → orbit shards on a local
Ray cluster → the `debug` video model fine-tuned on them (Ray Train + DeepSpeed ZeRO-2, 2 workers)
→ synthetic orbits from prompts and a photo (Ray Data, elastic actor pools, quality filter)
→ the `debug` reconstructor trained on them and the renders (Ray Train + DeepSpeed, stage schedule)
→ the image-to-3D endpoint on Ray Serve, sent a real photo (shipped inside scikit-image, so it works
offline) over HTTP → GLB + turntable MP4, with an evaluation report on the held-out objects
(PSNR/SSIM/LPIPS on novel views, Chamfer distance and F-score against the true meshes).
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


def serve_photo(model_dir: Path, photo: Path, mesh_path: Path, video_path: Path, log=print) -> dict:
    """Deploy the endpoint for `model_dir` on the connected Ray cluster (debug serve preset, a free
    port), send `photo` to /v1/image-to-3d and /v1/turntable as any client would, write the answers,
    and shut the endpoint down. Returns the stage's summary."""
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
    try:
        data = photo.read_bytes()
        mesh = requests.post(f"{url}/v1/image-to-3d", data=data, headers=headers, timeout=config.request_timeout_s)
        if mesh.status_code != 200:
            raise RuntimeError(f"the endpoint answered {mesh.status_code}: {mesh.text[:300]}")
        mesh_path.write_bytes(mesh.content)
        video = requests.post(f"{url}/v1/turntable", data=data, headers=headers, timeout=config.request_timeout_s)
        if video.status_code != 200:
            raise RuntimeError(f"the endpoint answered {video.status_code}: {video.text[:300]}")
        video_path.write_bytes(video.content)
        health = requests.get(f"{url}/healthz", timeout=60).json()
    finally:
        serve.shutdown()
    log(
        f"serve: {url} answered {photo.name} with a {len(mesh.content) / 1e6:.1f} MB GLB in {mesh.headers['x-vf3d-seconds']}s "
        f"and a turntable in {video.headers['x-vf3d-seconds']}s (triplane cache {video.headers['x-vf3d-triplane-cache']})"
    )
    return {
        "input": str(photo),
        "url": url,
        "mesh": str(mesh_path),
        "video": str(video_path),
        "vertices": int(mesh.headers["x-vf3d-vertices"]),
        "faces": int(mesh.headers["x-vf3d-faces"]),
        "turntable_triplane_cache": video.headers["x-vf3d-triplane-cache"],
        "images_encoded": health["images_encoded"],
    }


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
        photo = write_demo_photo(out / f"{DEMO_PHOTO}.png")
        stages["serve"] = serve_photo(out / "reconstructor", photo, out / "result.glb", out / "turntable.mp4", log=log)
        stages["serve"]["seconds"] = time.perf_counter() - stage_start

    summary = {"total_seconds": time.perf_counter() - started, "stages": stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, stage in stages.items():
        details = ", ".join(f"{key}={value}" for key, value in stage.items() if key != "seconds")
        log(f"[{name}] {stage['seconds']:.1f}s  {details}")
    log(
        f"demo finished in {summary['total_seconds']:.1f}s; GLB: {out / 'result.glb'}  MP4: {out / 'turntable.mp4'}  summary: {out / 'summary.json'}"
    )
    return summary

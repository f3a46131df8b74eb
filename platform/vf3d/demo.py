"""`vf3d demo`: the pipeline at `debug` size, end to end, with a summary of each stage.

For now the pipeline is: real sample meshes (shipped inside pybullet) → orbit shards on a local
Ray cluster → the `debug` video model fine-tuned on them (Ray Train + DeepSpeed ZeRO-2, 2 workers)
→ synthetic orbits from prompts and a photo (Ray Data, elastic actor pools, quality filter)
→ the `debug` reconstructor trained on them and the renders (Ray Train + DeepSpeed, stage schedule)
→ image-to-3d on a real photo (shipped inside scikit-image, so it works offline) → GLB + turntable
MP4. Later stages (evaluation, serving) join here as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vf3d import config as config_lib

DEMO_ASSETS = 8
"""Sample meshes rendered into orbit shards (the named pybullet objects first)."""
DEMO_PHOTO = "astronaut"
"""A real photo from skimage.data (astronaut, chelsea, coffee and rocket ship with the package)."""
DEMO_PROMPTS = ["a wooden chair", "a red toy car", "a ceramic mug", "a yellow rubber duck", "a potted cactus", "a leather boot", "a brass desk lamp", "a teddy bear", "a blue vase", "a robot toy", "a soccer ball", "a stack of books"]
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
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("image", pa.binary())])), path)
    return path


def write_demo_photo(path: Path, name: str = DEMO_PHOTO) -> Path:
    """Save a photo shipped with scikit-image as PNG at `path`."""
    import skimage.data
    from PIL import Image

    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


def run_demo(out: Path, log=print) -> dict:
    """Run every available stage at `debug` size under `out`; returns the summary it prints."""
    from vf3d.inference import ImageTo3D

    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    started = time.perf_counter()

    stage_start = time.perf_counter()
    from vf3d.data.assets import gather_sample_assets
    from vf3d.synthesis.cluster import ray_cluster
    from vf3d.synthesis.render_assets import render_assets
    from vf3d.synthesis.synthesize import synthesize
    from vf3d.training.recon import train_recon
    from vf3d.training.video import finetune_video

    assets = gather_sample_assets(out / "assets", limit=DEMO_ASSETS)
    with ray_cluster(log=log):
        rendered = render_assets(out / "assets", out / "orbits", config_lib.preset(config_lib.RENDER_ASSETS_PRESETS, "debug"), log=log)
        stages["render-assets"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "orbits"),
            "assets": len(assets),
            "orbits": rendered["orbits_total"],
            "errors": rendered["errors_total"],
            "frames_per_second": rendered["frames_per_second"],
        }
        stage_start = time.perf_counter()
        video_config = config_lib.preset(config_lib.FINETUNE_VIDEO_PRESETS, "debug")
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
        synthesized = synthesize(prompts, out / "video-model", out / "synthetic", config_lib.preset(config_lib.SYNTHESIZE_PRESETS, "debug"), log=log)
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
        recon_config = config_lib.preset(config_lib.TRAIN_RECON_PRESETS, "debug")
        recon_config.training.run.storage_path = str((out / "recon-runs").resolve())
        trained = train_recon(synthetic, out / "orbits", out / "reconstructor", recon_config, log=log)
        stages["train-recon"] = {
            "seconds": time.perf_counter() - stage_start,
            "output": str(out / "reconstructor"),
            "synthetic_data": str(synthetic),
            "novel_view_psnr": f"{trained['first_validation']['psnr']:.2f} -> {trained['last_validation']['psnr']:.2f}",
            "steps": trained["steps"],
        }

    model_dir = out / "reconstructor"
    stage_start = time.perf_counter()
    photo = write_demo_photo(out / f"{DEMO_PHOTO}.png")
    # A debug model trained for a minute has no calibrated density scale: mesh at Otsu's threshold.
    inference = config_lib.merge(config_lib.preset(config_lib.INFERENCE_PRESETS, "debug"), {"mesh_iso": "auto", "device": "cpu"})
    result = ImageTo3D.from_pretrained(model_dir, inference).run(photo, out / "result.glb", out / "turntable.mp4")
    stages["image-to-3d"] = {
        "seconds": time.perf_counter() - stage_start,
        "input": str(photo),
        "mesh": str(result.mesh_path),
        "video": str(result.video_path),
        "vertices": len(result.mesh.mesh.vertices),
        "faces": len(result.mesh.mesh.faces),
    }

    summary = {"total_seconds": time.perf_counter() - started, "stages": stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, stage in stages.items():
        details = ", ".join(f"{key}={value}" for key, value in stage.items() if key != "seconds")
        log(f"[{name}] {stage['seconds']:.1f}s  {details}")
    log(f"demo finished in {summary['total_seconds']:.1f}s; GLB: {result.mesh_path}  MP4: {result.video_path}  summary: {out / 'summary.json'}")
    return summary

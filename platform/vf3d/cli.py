"""The `vf3d` command: thin argument parsing over the library; every command has its own --help.

Bad input (unreadable images, bad configs, wrong model directories) exits with status 2 and one
line on stderr naming the problem; unexpected failures keep their traceback and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vf3d import __version__
from vf3d import config as config_lib

MESH_SUFFIXES = (".glb", ".obj", ".ply")


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself."""


def _check_path(path: Path, flag: str | None, kind: str, directory: bool) -> None:
    """UsageError unless `path` is an existing directory (or file): a path of the wrong kind is
    named as such, not reported as missing ("X is a file, not a model directory")."""
    if path.is_dir() if directory else path.is_file():
        return
    prefix = f"{flag}: " if flag else ""
    if not path.exists():
        raise UsageError(f"{prefix}{kind} not found: {path}")
    article = "an" if kind[0] in "aeiou" else "a"
    raise UsageError(f"{prefix}{path} is a {'file' if directory else 'directory'}, not {article} {kind}")


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user gave bad input" (exit 2, one line, no traceback)."""
    from vf3d.models.release_weights import CheckpointFormatError
    from vf3d.data.assets import AssetError
    from vf3d.data.shards import ShardFormatError
    from vf3d.mesh import EmptyMeshError
    from vf3d.models.pretrained import ModelDirectoryError
    from vf3d.preprocess import ImageInputError

    from vf3d.synthesis.quality import LabelsError
    from vf3d.training.checkpointing import CheckpointError

    return (UsageError, config_lib.ConfigError, ImageInputError, ModelDirectoryError, CheckpointFormatError, CheckpointError, EmptyMeshError, AssetError, ShardFormatError, LabelsError)


def _add_config_arguments(parser: argparse.ArgumentParser, presets: dict, default: str) -> None:
    parser.add_argument("--preset", default=default, choices=list(presets), help="named settings to start from (default: %(default)s)")
    parser.add_argument("--config", type=Path, help="YAML/JSON file overriding preset fields (unknown keys are rejected)")


def _add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a private local cluster)")


def _print(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------
# image-to-3d
# --------------------------------------------------------------------------------------------


def _image_to_3d(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in MESH_SUFFIXES:
        raise UsageError(f"--out must end in one of {', '.join(MESH_SUFFIXES)}, got {out.name!r}")
    if args.video is not None and Path(args.video).suffix.lower() != ".mp4":
        raise UsageError(f"--video must end in .mp4, got {Path(args.video).name!r}")
    image_path = Path(args.image)
    _check_path(image_path, None, "image file", directory=False)
    _check_path(args.model, "--model", "model directory", directory=True)
    config = config_lib.resolve(config_lib.INFERENCE_PRESETS, args.preset, args.config)
    overrides = {
        "mesh_resolution": args.mesh_resolution,
        "mesh_iso": None if args.mesh_iso is None else (args.mesh_iso if args.mesh_iso == "auto" else _float(args.mesh_iso, "--mesh-iso")),
        "device": args.device,
    }
    if args.seed is not None:
        overrides.update(seed=args.seed, deterministic=False)
    config = config_lib.merge(config, {key: value for key, value in overrides.items() if value is not None}).validate()

    from vf3d.inference import ImageTo3D
    from vf3d.preprocess import load_image

    load_image(image_path)  # fail fast on a bad image, before loading the model
    started = time.perf_counter()
    pipeline = ImageTo3D.from_pretrained(args.model, config)
    _print(f"loaded {args.model} on {pipeline.device} in {time.perf_counter() - started:.1f}s")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = pipeline.run(image_path, out, args.video)
    summary = {
        "image": str(image_path),
        "model": str(args.model),
        "mesh": str(result.mesh_path),
        "video": None if result.video_path is None else str(result.video_path),
        "iso": result.iso,
        "vertices": len(result.mesh.mesh.vertices),
        "faces": len(result.mesh.mesh.faces),
        "timings_s": {key: round(value, 3) for key, value in result.timings.items()},
        "config": config_lib.to_dict(config),
    }
    summary_path = out.with_name(out.name + ".json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    _print(f"mesh: {result.mesh_path} ({summary['vertices']} vertices, {summary['faces']} faces, iso {result.iso:.3g})")
    if result.video_path is not None:
        _print(f"video: {result.video_path} ({config.turntable_views} frames)")
    _print(f"summary: {summary_path}")
    return 0


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'auto', got {text!r}") from None


# --------------------------------------------------------------------------------------------
# init-model, import-checkpoint, show-config
# --------------------------------------------------------------------------------------------


def _init_model(args: argparse.Namespace) -> int:
    import torch

    from vf3d.models.reconstructor import Reconstructor

    config = config_lib.resolve(config_lib.RECONSTRUCTOR_PRESETS, args.preset, args.config)
    torch.manual_seed(args.seed)
    model = Reconstructor(config)
    model.save_pretrained(args.out, metadata={"created_by": f"vf3d init-model --preset {args.preset} --seed {args.seed}"})
    parameters = sum(p.numel() for p in model.parameters())
    _print(f"wrote a randomly initialised {args.preset!r} reconstructor ({parameters:,} parameters) to {args.out}")
    return 0


def _import_checkpoint(args: argparse.Namespace) -> int:
    from vf3d.models.release_weights import import_checkpoint

    _check_checkpoint_source(args.src)
    overrides = config_lib.load_overrides(args.config) if args.config else None
    out = import_checkpoint(args.src, args.out, format=args.format, overrides=overrides)
    _print(f"imported {args.format} checkpoint {args.src} into {out}")
    return 0


def _check_checkpoint_source(src: Path) -> None:
    """One line for a checkpoint path that is missing, a directory without model.safetensors, empty
    or unreadable; what the bytes hold is judged by the importer."""
    if not src.exists():
        raise UsageError(f"checkpoint not found: {src}")
    if src.is_dir():
        if not (src / "model.safetensors").is_file():
            raise UsageError(f"{src} is a directory without model.safetensors; give the checkpoint file itself (.safetensors, .pt, .pth, .bin)")
        src = src / "model.safetensors"
    if not src.is_file():
        raise UsageError(f"{src} is not a regular file")
    try:
        with src.open("rb") as file:
            empty = not file.read(1)
    except OSError as error:
        raise UsageError(f"cannot read checkpoint {src}: {error.strerror or error}") from None
    if empty:
        raise UsageError(f"checkpoint {src} is an empty file")


def _render_assets(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.RENDER_ASSETS_PRESETS, args.preset, args.config)
    overrides = {"num_views": args.views, "resolution": args.resolution, "elevation_range_deg": args.elevation_range}
    config = config_lib.merge(config, {"render": {key: value for key, value in overrides.items() if value is not None}}).validate()
    _check_path(args.assets, "--assets", "directory of meshes", directory=True)
    from vf3d.ray_runtime import ray_cluster
    from vf3d.synthesis.render_assets import render_assets

    with ray_cluster(args.address, log=_print):
        render_assets(args.assets, args.out, config, log=_print)
    return 0


def _finetune_video(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.FINETUNE_VIDEO_PRESETS, args.preset, args.config)
    run = {"name": args.name, "storage_path": None if args.storage_path is None else str(args.storage_path), "max_steps": args.max_steps}
    config = config_lib.merge(config, {"training": {"run": {key: value for key, value in run.items() if value is not None}}}).validate()
    from vf3d.data.shards import list_shard_files
    from vf3d.ray_runtime import ray_cluster
    from vf3d.training.video import finetune_video

    _check_path(args.data, "--data", "shard directory", directory=True)
    if not list_shard_files(args.data):
        raise UsageError(f"--data holds no orbit shards: {args.data} (make some with `vf3d render-assets`)")
    with ray_cluster(args.address, log=_print):
        finetune_video(args.data, args.out, config, log=_print)
    return 0


def _synthesize(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.SYNTHESIZE_PRESETS, args.preset, args.config)
    overrides: dict = {}
    if args.text_to_image is not None:
        overrides["generation"] = {"text_to_image_path": str(args.text_to_image)}
    if args.probe is not None:
        overrides["filter"] = {"probe_path": str(args.probe)}
    if args.retry_errors:
        overrides["retry_errors"] = True
    config = config_lib.merge(config, overrides).validate()
    from vf3d.ray_runtime import ray_cluster
    from vf3d.synthesis.synthesize import read_inputs, synthesize, video_model_settings

    _check_path(args.video_model, "--video-model", "video model directory", directory=True)
    video_model_settings(args.video_model)  # fail fast on bad inputs, before Ray starts
    read_inputs(args.prompts)
    with ray_cluster(args.address, log=_print):
        synthesize(args.prompts, args.video_model, args.out, config, log=_print)
    return 0


def _train_filter(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.TRAIN_FILTER_PRESETS, args.preset, args.config)
    if args.encoder is not None:
        config = config_lib.merge(config, {"encoder": {"encoder": {"pretrained_path": str(args.encoder)}}})
    config = config.validate()
    missing = [str(path) for path in args.data if not path.exists()]
    if missing:
        raise UsageError(f"--data directories not found: {missing}")
    for path in args.data:
        _check_path(path, "--data", "shard directory", directory=True)
    _check_path(args.labels, "--labels", "labels file", directory=False)
    if args.encoder is not None:
        _check_path(args.encoder, "--encoder", "DINOv2 directory", directory=True)
    from vf3d.synthesis.quality import train_filter

    train_filter(args.labels, list(args.data), args.out, config, log=_print)
    return 0


def _train_recon(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.TRAIN_RECON_PRESETS, args.preset, args.config)
    run = {"name": args.name, "storage_path": None if args.storage_path is None else str(args.storage_path)}
    overrides: dict = {"training": {"run": {key: value for key, value in run.items() if value is not None}}}
    if args.init is not None:
        overrides["init_path"] = str(args.init)
    config = config_lib.merge(config, overrides).validate()
    if args.data is None and args.data_3d is None:
        raise UsageError("give --data (synthetic orbit shards) and/or --data-3d (rendered orbit shards)")
    for flag, path, kind in [("--data", args.data, "shard directory"), ("--data-3d", args.data_3d, "shard directory"), ("--init", args.init, "model directory")]:
        if path is not None:
            _check_path(path, flag, kind, directory=True)
    from vf3d.ray_runtime import ray_cluster
    from vf3d.training.recon import train_recon

    with ray_cluster(args.address, log=_print):
        train_recon(args.data, args.data_3d, args.out, config, log=_print)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.EVALUATE_PRESETS, args.preset, args.config)
    overrides: dict = {}
    if args.limit is not None:
        overrides["limit"] = args.limit
    if args.clip is not None:
        overrides["clip"] = {"weights_path": str(args.clip)}
    if args.lpips_backbone is not None:
        overrides["lpips"] = {"backbone_path": str(args.lpips_backbone)}
    if args.device is not None:
        overrides["inference"] = {"device": args.device}
    config = config_lib.merge(config, overrides).validate()
    models = list(args.model) + list(args.compare or [])
    for flag, path in [("--data", args.data), ("--assets", args.assets)] + [("--model", model) for model in models]:
        if path is not None and not path.is_dir():
            raise UsageError(f"{flag}: not a directory: {path}")
    for flag, path in [("--ids", args.ids), ("--lpips-backbone", args.lpips_backbone)]:
        if path is not None and path.is_dir():  # a missing one is reported by its loader
            raise UsageError(f"{flag}: {path} is a directory, not a file")
    from vf3d.inference import resolve_device

    resolve_device(config.inference.device)  # a CUDA-less machine fails here, before any orbit is read
    from vf3d.evaluation.evaluate import evaluate, read_ids_file

    ids = read_ids_file(args.ids) if args.ids is not None else None
    evaluate(models, args.data, args.out, config, assets_dir=args.assets, ids=ids, log=_print)
    return 0


def _sample_assets(args: argparse.Namespace) -> int:
    from vf3d.data.assets import gather_sample_assets

    paths = gather_sample_assets(args.out, limit=args.limit)
    _print(f"gathered {len(paths)} sample assets from pybullet_data into {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vf3d.demo import run_demo

    run_demo(args.out, log=_print)
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = config_lib.resolve(config_lib.SERVE_PRESETS, args.preset, args.config)
    overrides = {"host": args.host, "port": args.port}
    config = config_lib.merge(config, {key: value for key, value in overrides.items() if value is not None}).validate()

    import os

    from vf3d.serving.app import build_application, check_port_free, run_endpoint
    from vf3d.ray_runtime import ray_cluster

    application = build_application(args.model, config)  # checks the model directory first
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # A private cluster's proxy listens on this machine: a busy port would otherwise surface
        # as a long Serve traceback after Ray has started. (On a joined cluster the proxy may
        # already hold the port.)
        problem = check_port_free(config.host, config.port)
        if problem:
            raise UsageError(problem)
    with ray_cluster(args.address, log=_print):
        run_endpoint(application, config, log=_print)
    return 0


def _show_config(args: argparse.Namespace) -> int:
    tables = {
        "reconstructor": config_lib.RECONSTRUCTOR_PRESETS,
        "inference": config_lib.INFERENCE_PRESETS,
        "render-assets": config_lib.RENDER_ASSETS_PRESETS,
        "finetune-video": config_lib.FINETUNE_VIDEO_PRESETS,
        "synthesize": config_lib.SYNTHESIZE_PRESETS,
        "train-filter": config_lib.TRAIN_FILTER_PRESETS,
        "train-recon": config_lib.TRAIN_RECON_PRESETS,
        "evaluate": config_lib.EVALUATE_PRESETS,
        "serve": config_lib.SERVE_PRESETS,
    }
    config = config_lib.resolve(tables[args.kind], args.preset, args.config)
    _print(json.dumps(config_lib.to_dict(config), indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# submit (the logic lives in vf3d.jobs)
# --------------------------------------------------------------------------------------------


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    import os

    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"), metavar="URL", help="the cluster's job server, i.e. the dashboard: http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--wait", action="store_true", help="stream the job's logs until it ends; exit 0 when it succeeded, 1 when it failed or was stopped")
    parser.add_argument("--submission-id", metavar="ID", help="job id (default: vf3d-STAGE-<hash of the stage, its arguments and the job file>, so a retried submit finds the first job)")
    parser.add_argument("--num-cpus", type=float, metavar="N", help="CPUs reserved for the job's driver (entrypoint_num_cpus)")
    parser.add_argument("--num-gpus", type=float, metavar="N", help="GPUs reserved for the job's driver (entrypoint_num_gpus; evaluate runs its model there)")
    parser.add_argument("--config", type=Path, metavar="JOBFILE", help="job config file inside the working directory, e.g. jobs/configs/render-assets-debug.yaml")
    parser.add_argument("--working-dir", type=Path, metavar="DIR", help="repository root uploaded as the job's working_dir (default: the one holding this vf3d's jobs/, else the current directory)")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="where the job's relative paths resolve (sets VF3D_DATA_ROOT; default: the current directory when --address is on this machine)")


def _submit_stage_args(args: argparse.Namespace) -> list[str]:
    """Split what argparse left after STAGE (args.rest) into submit options, parsed into `args`,
    and the stage's arguments: everything after `--`, or from the first token that is not a
    submit option (argparse drops a `--` that directly follows STAGE)."""
    options = argparse.ArgumentParser(prog=f"vf3d submit {args.stage}", allow_abbrev=False)  # --data is not --data-root
    _add_submit_options(options)
    flags = options._option_string_actions
    index, split = 0, None
    while index < len(args.rest) and split is None:
        token = args.rest[index]
        action = flags.get(token.split("=", 1)[0])
        if token == "--":
            split = index
        elif action is None:
            break
        else:
            index += 1 if "=" in token or action.nargs == 0 else 2
    head = args.rest[: index if split is None else split]
    options.parse_args(head, namespace=args)
    return args.rest[index:] if split is None else args.rest[split + 1:]


def _submit(args: argparse.Namespace) -> int:
    from vf3d import jobs

    stage_args = _submit_stage_args(args)
    if not args.address:
        raise UsageError("give --address http://HEAD:8265 (the Ray dashboard of the cluster) or set RAY_API_SERVER_ADDRESS")
    try:
        submission = jobs.prepare_submission(args.stage, args.address, args.config, stage_args, args.submission_id, args.num_cpus, args.num_gpus, args.working_dir, args.data_root)
        if jobs.DATA_ROOT_ENV in submission.runtime_env.get("env_vars", {}):
            _print(f"relative paths of the job resolve against {submission.runtime_env['env_vars'][jobs.DATA_ROOT_ENV]}")
        client = jobs.connect(args.address)
        outcome = jobs.submit(client, submission, log=_print)
    except jobs.JobSubmitError as error:
        raise UsageError(str(error)) from None
    if not args.wait:
        _print(f"follow it: ray job logs --follow {outcome.submission_id} --address {args.address}  (or rerun this with --wait)")
        return 0
    return jobs.wait_for_job(client, outcome.submission_id, log=_print)


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full `vf3d` argument parser (one sub-command per pipeline stage)."""
    parser = argparse.ArgumentParser(prog="vf3d", description="vf3d: an open, scalable VFusion3D platform (image → 3D on Ray).")
    parser.add_argument("--version", action="version", version=f"vf3d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    command = commands.add_parser("image-to-3d", help="reconstruct a mesh (and a turntable video) from one image", description="Reconstruct a vertex-coloured mesh from a single image with a reconstructor directory; optionally render a turntable MP4.")
    command.add_argument("image", help="input image (PNG/JPEG/WebP...; an alpha channel is used as the foreground mask)")
    command.add_argument("--model", required=True, type=Path, help="reconstructor directory (config.json + model.safetensors)")
    command.add_argument("--out", required=True, type=Path, help="output mesh: .glb (default viewer format), .obj or .ply")
    command.add_argument("--video", type=Path, help="also write a turntable video to this .mp4")
    command.add_argument("--mesh-resolution", type=int, help="marching-cubes grid size per axis (preset: base 256)")
    command.add_argument("--mesh-iso", help="density level of the surface, or 'auto' (Otsu); default: the model's")
    command.add_argument("--seed", type=int, help="use seeded random ray sampling instead of the default deterministic sampling")
    command.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    _add_config_arguments(command, config_lib.INFERENCE_PRESETS, "base")
    command.set_defaults(handler=_image_to_3d)

    command = commands.add_parser("init-model", help="write a randomly initialised reconstructor directory from a preset", description="Create a reconstructor directory with random weights (a starting point for training, or a debug model).")
    command.add_argument("--out", required=True, type=Path, help="directory to write config.json + model.safetensors into")
    command.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: %(default)s)")
    _add_config_arguments(command, config_lib.RECONSTRUCTOR_PRESETS, "debug")
    command.set_defaults(handler=_init_model)

    command = commands.add_parser("import-checkpoint", help="convert released VFusion3D/OpenLRM weights into a reconstructor directory", description="Map a released checkpoint (safetensors, or a torch.save dict under model_state_dict, loaded weights-only) into our model directory; sizes are inferred from tensor shapes.")
    command.add_argument("src", type=Path, help="released checkpoint file (.safetensors, .pt, .pth, .bin) or a directory holding model.safetensors")
    command.add_argument("--format", required=True, choices=["vfusion3d", "openlrm"], help="layout of the source checkpoint")
    command.add_argument("--out", required=True, type=Path, help="reconstructor directory to write")
    command.add_argument("--config", type=Path, help="YAML/JSON overrides for what shapes cannot tell (e.g. transformer.num_heads, encoder.image_size)")
    command.set_defaults(handler=_import_checkpoint)

    command = commands.add_parser("render-assets", help="render a folder of 3D assets into orbit shards (Ray Data)", description="Render every mesh under --assets (GLB/glTF/OBJ/PLY/STL/OFF) into orbit videos stored as Parquet shards, on an elastic Ray Data actor pool. Resumable: a rerun renders only what is missing.")
    command.add_argument("--assets", required=True, type=Path, help="directory of meshes (searched recursively; optional captions.json/jsonl maps relative paths to prompts)")
    command.add_argument("--out", required=True, type=Path, help="shard directory (orbits-*.parquet, _errors/, render_summary.json)")
    command.add_argument("--views", type=int, help="orbit views per asset (preset: 16)")
    command.add_argument("--resolution", type=int, help="frame side in pixels")
    command.add_argument("--elevation-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="elevation range in degrees, one draw per asset (default 0 45)")
    _add_address_argument(command)
    _add_config_arguments(command, config_lib.RENDER_ASSETS_PRESETS, "small")
    command.set_defaults(handler=_render_assets)

    command = commands.add_parser("finetune-video", help="fine-tune the orbit video model on orbit shards (Ray Train + DeepSpeed)", description="Fine-tune the multi-view video model on orbit shards with Ray Train and DeepSpeed (ZeRO 0/2/3), checkpointing every N steps; a rerun with the same --name resumes. The final model is written to --out in the diffusers save_pretrained layout.")
    command.add_argument("--data", required=True, type=Path, help="orbit shard directory (from render-assets or synthesize)")
    command.add_argument("--out", required=True, type=Path, help="directory for the exported model (diffusers layout), the resolved config and the run summary")
    command.add_argument("--name", help="run name; rerunning with the same name and storage resumes from its latest checkpoint")
    command.add_argument("--storage-path", type=Path, help="where checkpoints go (default: OUT/training_runs)")
    command.add_argument("--max-steps", type=int, help="total optimizer steps")
    _add_address_argument(command)
    _add_config_arguments(command, config_lib.FINETUNE_VIDEO_PRESETS, "debug")
    command.set_defaults(handler=_finetune_video)

    command = commands.add_parser("synthesize", help="generate filtered synthetic orbit shards from prompts or images (Ray Data)", description="Prompts (or images) → first frames → orbit videos → foreground masks → quality filter → orbit shards (source=synthetic), each model stage on its own elastic Ray Data actor pool. Every input ends in exactly one table: kept orbits, _rejected/ (with scores and reasons) or _errors/ (with the reason). Resumable: a rerun with the same arguments processes only the missing ids.")
    command.add_argument("--prompts", required=True, type=Path, help="Parquet/CSV/JSONL with columns id, prompt and optional image (bytes or a path relative to the file) and elevation (degrees); or a folder of images")
    command.add_argument("--video-model", required=True, type=Path, help="fine-tuned orbit video model directory (from finetune-video)")
    command.add_argument("--out", required=True, type=Path, help="shard directory (synthetic-*.parquet, _rejected/, _errors/, synthesize_summary.json)")
    command.add_argument("--text-to-image", type=Path, help="local diffusers text-to-image pipeline drawing first frames for inputs without an image (sets generation.text_to_image_path)")
    command.add_argument("--probe", type=Path, help="quality probe directory from train-filter (sets filter.probe_path; default: heuristics only)")
    command.add_argument("--retry-errors", action="store_true", help="also retry inputs that failed in an earlier run (their old error rows are archived)")
    _add_address_argument(command)
    _add_config_arguments(command, config_lib.SYNTHESIZE_PRESETS, "node")
    command.set_defaults(handler=_synthesize)

    command = commands.add_parser("train-filter", help="fit the synthetic-orbit quality probe from labelled orbits", description="Fit a linear probe on frozen DINOv2 features of labelled orbits (good/bad), hold out a share to measure it, and write the probe directory that `synthesize --probe` uses.")
    command.add_argument("--labels", required=True, type=Path, help="CSV/JSONL/Parquet with columns id and label (good/bad, keep/reject, 1/0, true/false)")
    command.add_argument("--data", required=True, type=Path, action="append", help="shard directory holding the labelled orbits (kept or _rejected/); repeat for several")
    command.add_argument("--out", required=True, type=Path, help="probe directory to write (config.json, model.safetensors, filter_report.json)")
    command.add_argument("--encoder", type=Path, help="local DINOv2 directory (transformers layout; sets encoder.encoder.pretrained_path)")
    _add_config_arguments(command, config_lib.TRAIN_FILTER_PRESETS, "dinov2-base")
    command.set_defaults(handler=_train_filter)

    command = commands.add_parser("train-recon", help="train the image→3D reconstructor on orbit shards (Ray Train + DeepSpeed)", description="Train the reconstructor with VFusion3D's recipe: a stage schedule of render resolutions and crops on synthetic orbits (LPIPS + opacity + TV, camera noise), then a fine-tune on real renders with pixel loss. Checkpoints every N steps; a rerun with the same --name resumes. Writes a reconstructor directory that image-to-3d loads, validation metrics (JSONL) and plots.")
    command.add_argument("--data", type=Path, help="synthetic orbit shards (from synthesize) for the synthetic stages")
    command.add_argument("--data-3d", type=Path, help="orbit shards rendered from 3D assets (from render-assets) for the 3D fine-tune stage")
    command.add_argument("--out", required=True, type=Path, help="reconstructor directory to write (plus train_log.jsonl, validation.jsonl, plots, checkpoints)")
    command.add_argument("--init", type=Path, help="reconstructor directory to start from (e.g. imported released weights)")
    command.add_argument("--name", help="run name; rerunning with the same name and storage resumes from its latest checkpoint")
    command.add_argument("--storage-path", type=Path, help="where checkpoints go (default: OUT/training_runs)")
    _add_address_argument(command)
    _add_config_arguments(command, config_lib.TRAIN_RECON_PRESETS, "debug")
    command.set_defaults(handler=_train_recon)

    command = commands.add_parser("evaluate", help="score reconstructors on held-out orbits: PSNR/SSIM/LPIPS, CLIP, Chamfer/F-score", description="Reconstruct every orbit of --data from its view 0 and compare novel views with the true ones (PSNR, SSIM, LPIPS), CLIP image/text similarity of the predicted views (weights from a local path), and Chamfer distance / F-score of the mesh against the source asset under --assets. Writes metrics.json, report.md and figures/ into --out; with several --model (or --compare) the report compares them with the first.")
    command.add_argument("--model", required=True, type=Path, action="append", metavar="DIR", help="reconstructor directory; repeat to compare models (the first is the baseline)")
    command.add_argument("--compare", type=Path, action="append", metavar="DIR", help="another reconstructor directory to compare with the first --model")
    command.add_argument("--data", required=True, type=Path, metavar="DIR", help="orbit shards of held-out objects (from render-assets or synthesize)")
    command.add_argument("--out", required=True, type=Path, metavar="DIR", help="report directory (metrics.json, report.md, figures/, evaluate_config.json)")
    command.add_argument("--assets", type=Path, metavar="DIR", help="root the shards' asset paths are relative to (the --assets of render-assets): enables Chamfer/F-score")
    command.add_argument("--limit", type=int, metavar="N", help="evaluate at most N orbits (the first by id, or by --ids order)")
    command.add_argument("--ids", type=Path, metavar="FILE", help="text file of orbit ids to evaluate, one per line")
    command.add_argument("--clip", type=Path, metavar="PATH", help="local open_clip weights: a checkpoint file for clip.model, or a directory with open_clip_config.json (sets clip.weights_path)")
    command.add_argument("--lpips-backbone", type=Path, metavar="FILE", help="local torchvision state dict of the LPIPS backbone, e.g. alexnet-owt-7be5be79.pth (sets lpips.backbone_path)")
    command.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    _add_config_arguments(command, config_lib.EVALUATE_PRESETS, "full")
    command.set_defaults(handler=_evaluate)

    command = commands.add_parser("sample-assets", help="copy real sample meshes shipped in pybullet_data into a folder", description="Gather the textured duck, soccer ball, table, tray, jenga, domino and random_urdfs objects from pybullet_data (pip install 'vf3d[assets]') into a self-contained folder.")
    command.add_argument("--out", required=True, type=Path, help="directory to copy the meshes (and their materials and textures) into")
    command.add_argument("--limit", type=int, help="at most this many assets (the named ones first)")
    command.set_defaults(handler=_sample_assets)

    command = commands.add_parser("serve", help="serve a reconstructor as an HTTP endpoint (Ray Serve)", description="Deploy the image-to-3D endpoint (POST /v1/image-to-3d, POST /v1/turntable, GET /healthz, a web page at /) for a reconstructor directory on Ray Serve, with batched model replicas and CPU mesh replicas; blocks until Ctrl-C. Set VF3D_API_KEY to require 'Authorization: Bearer <key>'.")
    command.add_argument("--model", required=True, type=Path, help="reconstructor directory (config.json + model.safetensors)")
    command.add_argument("--port", type=int, help="HTTP port (preset: 8000)")
    command.add_argument("--host", help="HTTP host (debug preset: 127.0.0.1; 0.0.0.0 listens on every interface)")
    _add_address_argument(command)
    _add_config_arguments(command, config_lib.SERVE_PRESETS, "debug")
    command.set_defaults(handler=_serve)

    command = commands.add_parser("submit", allow_abbrev=False, usage="vf3d submit STAGE --address URL [--wait] [--submission-id ID] [--num-cpus N] [--num-gpus N] [--config JOBFILE] [--working-dir DIR] [--data-root DIR] [-- STAGE-ARGS...]", help="run a pipeline stage as a Ray job on a cluster (JobSubmissionClient)", description="Submit jobs/STAGE.py to a Ray cluster's job server with the repository as working_dir and the vf3d package as py_modules. The submission id is derived from the stage, its arguments and the job file, so submitting the same thing again reports the existing job instead of starting another. Stage arguments (after `--`) override the job file's `args`; relative paths in either resolve on the cluster against --data-root.", epilog="example: vf3d submit render-assets --address http://127.0.0.1:8265 --config jobs/configs/render-assets-debug.yaml --wait -- --out job-output/orbits")
    command.add_argument("stage", metavar="STAGE", help="render-assets, finetune-video, synthesize, train-recon or evaluate")
    _add_submit_options(command)
    command.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    command.set_defaults(handler=_submit)

    command = commands.add_parser("demo", help="run the whole pipeline at debug size (what `make demo` runs)", description="Run every available stage at debug size on this machine and print a summary of each.")
    command.add_argument("--out", type=Path, default=Path("demo-output"), help="directory for all demo outputs (default: %(default)s)")
    command.set_defaults(handler=_demo)

    command = commands.add_parser("show-config", help="print a preset's resolved configuration as JSON", description="Print a preset, optionally overridden by a YAML/JSON file, after validation.")
    command.add_argument("kind", choices=["reconstructor", "inference", "render-assets", "finetune-video", "synthesize", "train-filter", "train-recon", "evaluate", "serve"], help="which configuration")
    command.add_argument("--preset", default="debug", help="preset name of that configuration (default: %(default)s)")
    command.add_argument("--config", type=Path, help="YAML/JSON file overriding preset fields (unknown keys are rejected)")
    command.set_defaults(handler=_show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vf3d` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config_file = getattr(args, "config", None)
        if isinstance(config_file, Path) and config_file.is_dir():  # else every loader says "not found"
            raise UsageError(f"--config: {config_file} is a directory, not a YAML/JSON file")
        return args.handler(args)
    except _input_errors() as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"vf3d {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

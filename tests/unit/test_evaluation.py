"""Evaluation metrics: PSNR/SSIM pinned to scikit-image, Chamfer distance and F-score against
their analytic values, the source-canonical → asset frame transform, CLIP similarities with
open_clip weights loaded from a local path, the report's aggregates, and `vf3d evaluate`'s errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from vf3d import cameras
from vf3d.config import ConfigError
from vf3d.evaluation.config import EvalClipConfig
from vf3d.evaluation.geometry import align_bbox, chamfer_fscore, geometry_scores, sample_points, source_frame_to_world

# ------------------------------------------------------------------------------ image metrics


def test_psnr_and_ssim_match_scikit_image_within_1e_4():
    # test_losses_metrics.py checks PSNR against its formula and SSIM at 1e-3; this pins both to
    # scikit-image's own functions on the same images.
    from scipy.ndimage import gaussian_filter
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from vf3d.image_metrics import psnr, ssim

    side = 64
    clean = np.stack([image[:side, :side].astype(np.float32) / 255 for image in (data.astronaut(), data.chelsea(), data.coffee())])
    rng = np.random.default_rng(0)
    distorted = np.stack(
        [np.clip(clean[0] + rng.normal(0, 0.08, clean[0].shape), 0, 1), gaussian_filter(clean[1], sigma=(1.5, 1.5, 0)), clean[2] ** 1.6]
    ).astype(np.float32)
    to_torch = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2)  # noqa: E731
    reference_psnr = [peak_signal_noise_ratio(c.astype(np.float64), d.astype(np.float64), data_range=1.0) for d, c in zip(distorted, clean)]
    reference_ssim = [
        structural_similarity(
            d.astype(np.float64),
            c.astype(np.float64),
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for d, c in zip(distorted, clean)
    ]
    np.testing.assert_allclose(psnr(to_torch(distorted), to_torch(clean)).numpy(), reference_psnr, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ssim(to_torch(distorted), to_torch(clean)).numpy(), reference_ssim, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------- geometry


def unit_sphere():
    return trimesh.creation.icosphere(subdivisions=5, radius=1.0)


def test_a_mesh_against_itself_has_zero_chamfer_and_full_fscore():
    mesh = trimesh.creation.box(extents=(0.5, 0.8, 0.3))
    points = sample_points(mesh, 5000, seed=3)
    np.testing.assert_array_equal(points, sample_points(mesh, 5000, seed=3))  # same seed, same points
    scores = chamfer_fscore(points, sample_points(mesh, 5000, seed=3), threshold=0.01)
    assert scores.chamfer == 0.0 and scores.fscore == scores.precision == scores.recall == 1.0


@pytest.mark.parametrize("offset, threshold", [(0.2, 0.05), (0.4, 0.05)])
def test_a_shifted_unit_sphere_has_the_analytic_chamfer_and_fscore(offset, threshold):
    # Nearest-surface distances from one unit sphere to a copy moved by d are |r − 1| with r
    # distributed as r/2d on [1 − d, 1 + d]: their mean is d/2 (Chamfer d/2) and P(< τ) = τ/d.
    sphere = unit_sphere()
    moved = sphere.copy().apply_translation([0.0, 0.0, offset])
    scores = chamfer_fscore(sample_points(moved, 20000, seed=0), sample_points(sphere, 20000, seed=1), threshold)
    assert scores.chamfer == pytest.approx(offset / 2, rel=0.05)
    assert scores.fscore == pytest.approx(threshold / offset, abs=0.03)
    assert scores.precision == pytest.approx(scores.recall, abs=0.03)


def test_fscore_is_one_within_the_threshold_and_drops_beyond_it():
    sphere = unit_sphere()
    truth = sample_points(sphere, 20000, seed=1)
    near = chamfer_fscore(sample_points(sphere.copy().apply_translation([0.01, 0, 0]), 20000, seed=0), truth, threshold=0.05)
    far = chamfer_fscore(sample_points(sphere.copy().apply_translation([0.3, 0, 0]), 20000, seed=0), truth, threshold=0.05)
    assert near.fscore > 0.99 and far.fscore < 0.25 and far.chamfer > near.chamfer


def orbit_camera(azimuth_deg: float, elevation_deg: float) -> torch.Tensor:
    position = cameras.orbit_positions(
        torch.tensor(math.radians(azimuth_deg)), torch.tensor(math.radians(elevation_deg)), cameras.RENDER_RADIUS
    )
    return cameras.render_camera_vector(cameras.look_at(position[None]))[0]


def test_source_frame_to_world_undoes_the_training_frame_of_relative_to_source():
    source = orbit_camera(110.0, 25.0)
    targets = torch.stack([orbit_camera(azimuth, elevation) for azimuth, elevation in [(0, 0), (200, 10), (300, -20)]])
    relative = cameras.relative_to_source(source, targets)
    to_world = torch.from_numpy(source_frame_to_world(source)).float()
    relative_poses, _ = cameras.split_render_camera(relative)
    target_poses, _ = cameras.split_render_camera(targets)
    torch.testing.assert_close(to_world @ relative_poses, target_poses, atol=1e-5, rtol=0)
    # A world point p seen by a target camera lands on the same pixel as the source-frame point
    # X⁻¹·p seen by that camera in the source frame, which is what the model is trained to render.
    points = torch.rand(1, 50, 3) - 0.5
    in_source_frame = (torch.linalg.inv(to_world)[:3, :3] @ points[0].T).T + torch.linalg.inv(to_world)[:3, 3]
    for target, moved in zip(targets, relative):
        pixels, _ = cameras.project_points(points, target[None], 64)
        moved_pixels, _ = cameras.project_points(in_source_frame[None], moved[None], 64)
        torch.testing.assert_close(pixels, moved_pixels, atol=1e-3, rtol=0)
    # The canonical source view itself needs no transform.
    np.testing.assert_allclose(source_frame_to_world(orbit_camera(0.0, 0.0)), np.eye(4), atol=1e-6)


def test_source_frame_to_world_follows_the_model_canonical_azimuth():
    # An OpenLRM-style model (canonical camera on −Y): its frame is relative_to_source at −90°.
    source = orbit_camera(110.0, 25.0)
    targets = torch.stack([orbit_camera(azimuth, elevation) for azimuth, elevation in [(0, 0), (200, 10), (300, -20)]])
    relative, _ = cameras.split_render_camera(cameras.relative_to_source(source, targets, azimuth_deg=-90.0))
    to_world = torch.from_numpy(source_frame_to_world(source, azimuth_deg=-90.0)).float()
    torch.testing.assert_close(to_world @ relative, cameras.split_render_camera(targets)[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(source_frame_to_world(orbit_camera(-90.0, 0.0), azimuth_deg=-90.0), np.eye(4), atol=1e-6)
    assert np.array_equal(source_frame_to_world(source, azimuth_deg=0.0), source_frame_to_world(source))


def test_the_true_mesh_seen_from_the_source_frame_scores_perfectly_only_after_the_transform():
    truth = trimesh.creation.box(extents=(0.6, 0.3, 0.2)).apply_translation([0.2, -0.1, 0.15])
    source = orbit_camera(130.0, 35.0)
    in_source_frame = truth.copy().apply_transform(np.linalg.inv(source_frame_to_world(source)))  # what a perfect model extracts
    truth_points = sample_points(truth, 5000, seed=0)
    perfect = geometry_scores(in_source_frame, source, truth_points, truth, 5000, threshold=0.01, seed=0)
    assert perfect.chamfer < 1e-6 and perfect.fscore == 1.0
    untransformed = geometry_scores(in_source_frame, orbit_camera(0.0, 0.0), truth_points, truth, 5000, threshold=0.01, seed=0)
    assert untransformed.chamfer > 0.05 and untransformed.fscore < 0.5


def test_bbox_alignment_removes_offset_and_scale():
    truth = unit_sphere()
    predicted = truth.copy().apply_scale(0.5).apply_translation([0.3, 0.1, -0.2])
    aligned = align_bbox(predicted, truth)
    np.testing.assert_allclose(aligned.bounds, truth.bounds, atol=1e-9)
    scores = geometry_scores(
        predicted, orbit_camera(0.0, 0.0), sample_points(truth, 4000, seed=0), truth, 4000, threshold=0.05, alignment="bbox", seed=0
    )
    assert scores.fscore > 0.95


# --------------------------------------------------------------------------------------- CLIP

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random tiny open_clip model saved in the hub layout (open_clip_config.json + weights)
    and as a bare checkpoint for a registered architecture name; returns (dir, file, state)."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    directory = root / "tiny-hub"
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
    )
    save_file(state, str(directory / "open_clip_model.safetensors"))
    architecture = root / "vf3d-test-tiny-clip.json"
    architecture.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(architecture)  # registers the name "vf3d-test-tiny-clip"
    checkpoint = root / "tiny.safetensors"
    save_file(state, str(checkpoint))
    return directory, checkpoint, state


def test_clip_weights_load_from_a_local_directory_and_an_image_matches_itself(tiny_clip):
    from vf3d.evaluation.clip_metrics import ClipScorer

    directory, _, state = tiny_clip
    scorer = ClipScorer(EvalClipConfig(weights_path=str(directory), batch_size=2))
    assert not scorer.random and scorer.image_size == (32, 32)
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.testing.assert_close(scorer.mean.flatten(), torch.full((3,), 0.5))
    generator = torch.Generator().manual_seed(0)
    views = torch.rand(3, 3, 48, 48, generator=generator)
    image, text = scorer.similarities(views[1], views, "a yellow rubber duck")
    assert image.shape == text.shape == (3,)
    assert image[1].item() == pytest.approx(1.0, abs=1e-5)  # the same image
    assert (image.abs() <= 1 + 1e-5).all() and (text.abs() <= 1 + 1e-5).all()
    assert scorer.similarities(views[0], views)[1] is None  # no prompt, no text similarity
    embeddings = scorer.embed_images(views)  # batched in twos: the same as one pass
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))


def test_clip_checkpoint_files_load_for_a_named_architecture_and_bad_ones_are_config_errors(tiny_clip, tmp_path, caplog):
    from safetensors.torch import save_file

    from vf3d.evaluation.clip_metrics import ClipScorer

    _, checkpoint, state = tiny_clip
    scorer = ClipScorer(EvalClipConfig(model="vf3d-test-tiny-clip", weights_path=str(checkpoint)))
    assert torch.equal(scorer.model.state_dict()["text_projection"], state["text_projection"])
    with pytest.raises(ConfigError, match="clip.weights_path is required"):
        ClipScorer(EvalClipConfig(model="vf3d-test-tiny-clip"))
    with pytest.raises(ConfigError, match="no such file"):
        ClipScorer(EvalClipConfig(weights_path=str(tmp_path / "missing.safetensors")))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(ConfigError, match="cannot load"):
        ClipScorer(EvalClipConfig(model="vf3d-test-tiny-clip", weights_path=str(wrong)))
    with caplog.at_level("WARNING"):
        random = ClipScorer(EvalClipConfig(model="vf3d-test-tiny-clip", allow_random=True))
    assert random.random and "random" in random.description
    # Asked-for random weights: open_clip's own "No pretrained weights loaded" line is not repeated.
    assert not [record for record in caplog.records if "No pretrained weights" in record.getMessage()]


# ------------------------------------------------------------------------------------- report


def test_aggregates_skip_missing_values_and_deltas_are_per_object():
    from vf3d.evaluation.report import aggregate, deltas

    objects = [
        {"id": "a", "results": {"m1": {"psnr": 10.0, "chamfer": None}, "m2": {"psnr": 12.0, "chamfer": 0.2}}},
        {"id": "b", "results": {"m1": {"psnr": 14.0, "chamfer": 0.1}, "m2": {"psnr": 13.0, "chamfer": 0.3}}},
    ]
    summary = aggregate(objects, ["m1", "m2"])
    assert summary["m1"]["psnr"] == {"mean": 12.0, "std": 2.0, "count": 2}
    assert summary["m1"]["chamfer"] == {"mean": 0.1, "std": 0.0, "count": 1}
    assert summary["m1"]["clip_text"] == {"mean": None, "std": None, "count": 0}
    change = deltas(objects, ["m1", "m2"])["m2"]
    assert change["baseline"] == "m1" and change["psnr"]["mean"] == pytest.approx(0.5) and change["chamfer"]["count"] == 1
    assert deltas(objects, ["m1"]) == {}


def test_evaluation_modules_do_not_import_ray():
    import subprocess
    import sys

    code = "import sys, vf3d.evaluation.evaluate, vf3d.evaluation.geometry, vf3d.evaluation.clip_metrics, vf3d.evaluation.report; assert 'ray' not in sys.modules and 'deepspeed' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def small_orbits(tmp_path_factory):
    """Two synthetic-looking orbits of noise (no rendering needed for input checks)."""
    from vf3d.data import shards

    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("orbits")
    records = [
        shards.OrbitRecord(
            id=name,
            source="synthetic",
            prompt=name,
            rgb=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
            mask=np.full((4, 32, 32), 255, np.uint8),
            cameras=np.zeros((4, 25), np.float32),
            elevation=0.0,
        )
        for name in ("alpha", "beta")
    ]
    shards.OrbitShardWriter(directory).write(records)
    return directory


def test_orbits_are_selected_by_id_by_ids_file_order_and_limited(small_orbits, tmp_path):
    from vf3d.evaluation.evaluate import read_ids_file, select_orbits

    assert [orbit["id"] for orbit in select_orbits(small_orbits)] == ["alpha", "beta"]
    assert [orbit["id"] for orbit in select_orbits(small_orbits, limit=1)] == ["alpha"]
    ids = tmp_path / "ids.txt"
    ids.write_text("# comment\n\nbeta\nalpha\nbeta\n")
    assert read_ids_file(ids) == ["beta", "alpha"]
    assert [orbit["id"] for orbit in select_orbits(small_orbits, read_ids_file(ids), limit=1)] == ["beta"]
    assert select_orbits(small_orbits)[0]["prompt"] == "alpha"


def run_cli(capsys, *args):
    from vf3d.cli import main

    code = main(["evaluate", *map(str, args)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_evaluate_inputs_exit_2_with_one_line(capsys, tmp_path, small_orbits, debug_model_dir):
    ids = tmp_path / "ids.txt"
    ids.write_text("alpha\nnot-there\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    cases = [
        (["--model", debug_model_dir, "--data", tmp_path / "nowhere", "--out", tmp_path / "o"], "--data: not a directory"),
        (["--model", tmp_path / "no-model", "--data", small_orbits, "--out", tmp_path / "o"], "--model: not a directory"),
        (["--model", debug_model_dir, "--data", empty, "--out", tmp_path / "o", "--preset", "debug"], "holds no orbit shards"),
        (
            ["--model", debug_model_dir, "--data", small_orbits, "--out", tmp_path / "o", "--preset", "debug", "--ids", ids],
            "1 of 2 ids are not in",
        ),
        (
            [
                "--model",
                debug_model_dir,
                "--data",
                small_orbits,
                "--out",
                tmp_path / "o",
                "--preset",
                "debug",
                "--ids",
                tmp_path / "no-ids.txt",
            ],
            "--ids: no such file",
        ),
        (["--model", not_a_model, "--data", small_orbits, "--out", tmp_path / "o", "--preset", "debug"], "not a vf3d model directory"),
        (
            [
                "--model",
                debug_model_dir,
                "--data",
                small_orbits,
                "--out",
                tmp_path / "o",
                "--preset",
                "debug",
                "--assets",
                tmp_path / "no-assets",
            ],
            "--assets: not a directory",
        ),
        (
            ["--model", debug_model_dir, "--data", small_orbits, "--out", tmp_path / "o", "--preset", "debug", "--limit", "0"],
            "limit must be",
        ),
        (
            [
                "--model",
                debug_model_dir,
                "--data",
                small_orbits,
                "--out",
                tmp_path / "o",
                "--preset",
                "full",
                "--lpips-backbone",
                tmp_path / "none.pth",
                "--clip",
                tmp_path / "none.bin",
            ],
            "lpips.backbone_path: no such file",
        ),
    ]
    for args, expected in cases:
        code, lines = run_cli(capsys, *args)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("vf3d evaluate: error:") and expected in lines[0], (args, lines)
    assert not (tmp_path / "o").exists()


def test_the_full_preset_needs_real_weights(capsys, tmp_path, small_orbits, debug_model_dir):
    code, lines = run_cli(capsys, "--model", debug_model_dir, "--data", small_orbits, "--out", tmp_path / "o")
    assert code == 2 and len(lines) == 1 and "lpips.backbone_path is required" in lines[0] and "--lpips-backbone" in lines[0], lines
    overrides = tmp_path / "random-lpips.yaml"
    overrides.write_text("lpips:\n  net: squeeze\n  random_backbone: true\n")
    code, lines = run_cli(capsys, "--model", debug_model_dir, "--data", small_orbits, "--out", tmp_path / "o", "--config", overrides)
    assert code == 2 and len(lines) == 1 and "clip.weights_path is required" in lines[0] and "--clip PATH" in lines[0], lines
    assert not (tmp_path / "o").exists()

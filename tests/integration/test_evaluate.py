"""`vf3d evaluate` at debug size on real renders of pybullet assets: metrics.json, report.md and
figures for one random reconstructor, then a two-model comparison through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vf3d import config as config_lib
from vf3d.data import shards
from vf3d.data.config import OrbitRenderConfig
from vf3d.evaluation.config import EVALUATE_PRESETS
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS


@pytest.fixture(scope="module")
def evaluation_data(tmp_path_factory):
    """Orbits of pybullet's duck and soccer ball (8 views at 64², rendered as render-assets does,
    `asset` relative to the assets root), plus a prompt-less orbit without an asset (like a
    synthetic one) made from the duck's frames. Returns (assets root, shard directory)."""
    from vf3d.data.assets import caption_for, gather_sample_assets, load_asset
    from vf3d.data.orbit_renderer import OrbitRenderer, render_orbit

    root = tmp_path_factory.mktemp("evaluation")
    assets_dir = root / "assets"
    paths = gather_sample_assets(assets_dir, limit=2)
    render = OrbitRenderConfig(num_views=8, resolution=64, elevation_range_deg=[10.0, 30.0])
    records = []
    with OrbitRenderer(64) as renderer:
        for path in paths:
            relative = path.relative_to(assets_dir).as_posix()
            orbit = render_orbit(renderer, load_asset(path, margin=render.margin), render, relative, 0)
            records.append(
                shards.OrbitRecord(
                    id=path.stem,
                    source="render",
                    prompt=caption_for(path, assets_dir),
                    asset=relative,
                    rgba=orbit.rgba,
                    cameras=orbit.cameras,
                    num_orbit_views=orbit.num_orbit_views,
                    elevation=orbit.elevation_deg,
                    metadata={"margin": render.margin},
                )
            )
    duck = records[0]
    records.append(
        shards.OrbitRecord(
            id="zz-no-asset",
            source="synthetic",
            prompt="",
            rgba=duck.rgba,
            cameras=duck.cameras,
            num_orbit_views=8,
            elevation=duck.elevation,
        )
    )
    shards.OrbitShardWriter(root / "orbits").write(records)
    return assets_dir, root / "orbits"


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 32


def test_one_model_report_on_real_renders(evaluation_data, debug_model_dir, tmp_path):
    from vf3d.evaluation.evaluate import RANDOM_CLIP_WARNING, evaluate

    assets_dir, data_dir = evaluation_data
    lines: list[str] = []
    out = tmp_path / "report"
    config = config_lib.preset(EVALUATE_PRESETS, "debug")
    document = evaluate([debug_model_dir], data_dir, out, config, assets_dir=assets_dir, log=lines.append)

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}: not strict JSON")

    saved = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert saved == document
    assert saved["clip"]["random"] is True and RANDOM_CLIP_WARNING in saved["warnings"] and saved["lpips"]["random_backbone"] is True
    assert saved["models"][0]["dir"] == str(debug_model_dir.resolve()) and saved["config"]["num_views"] == 4
    assert [obj["id"] for obj in saved["objects"]] == ["duck", "soccerball", "zz-no-asset"]
    name = saved["models"][0]["name"]
    for obj in saved["objects"][:2]:  # rendered assets: every metric
        result = obj["results"][name]
        assert 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1 and result["lpips"] >= 0
        assert -1 <= result["clip_image"] <= 1 and -1 <= result["clip_text"] <= 1
        assert result["chamfer"] > 0 and 0 <= result["fscore"] <= 1 and result["mesh_faces"] > 0
    no_asset = saved["objects"][2]["results"][name]
    assert no_asset["clip_text"] is None and no_asset["chamfer"] is None and no_asset["psnr"] > 0
    summary = saved["aggregate"][name]
    assert summary["psnr"]["count"] == 3 and summary["chamfer"]["count"] == 2 and summary["clip_text"]["count"] == 2
    assert summary["psnr"]["mean"] == pytest.approx(np.mean([obj["results"][name]["psnr"] for obj in saved["objects"]]))
    assert json.loads((out / "evaluate_config.json").read_text()) == saved["config"]
    assert sum(line.startswith("[evaluate] ") for line in lines) == 3

    report = (out / "report.md").read_text()
    assert "**WARNING: random CLIP weights: similarities are meaningless**" in report
    object_rows = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |") or line.startswith("| 3 |")]
    assert len(object_rows) == 3 and "`duck`" in object_rows[0] and object_rows[0].count("|") == 11  # #, object, prompt + 7 metrics
    assert "**mean ± std**" in report and "F@0.05 ↑" in report
    figures = sorted((out / "figures").glob("*.png"))
    assert [path.name for path in figures] == [
        "metrics_per_object.png",
        "views-000-duck.png",
        "views-001-soccerball.png",
        "views-002-zz-no-asset.png",
    ]
    for path in figures:
        assert_valid_png(path)
        assert f"]({path.relative_to(out).as_posix()})" in report


def test_two_models_are_compared_from_the_command_line(evaluation_data, debug_model_dir, tmp_path, capsys):
    import torch

    from vf3d.cli import main
    from vf3d.models.reconstructor import Reconstructor

    assets_dir, data_dir = evaluation_data
    torch.manual_seed(1)
    other = tmp_path / "other-model"
    Reconstructor(config_lib.preset(RECONSTRUCTOR_PRESETS, "debug")).save_pretrained(other)
    ids = tmp_path / "ids.txt"
    ids.write_text("# just the soccer ball\nsoccerball\n")
    out = tmp_path / "compare"
    code = main(
        [
            "evaluate",
            "--model",
            str(debug_model_dir),
            "--compare",
            str(other),
            "--data",
            str(data_dir),
            "--assets",
            str(assets_dir),
            "--ids",
            str(ids),
            "--out",
            str(out),
            "--preset",
            "debug",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert str(out / "report.md") in capsys.readouterr().out

    saved = json.loads((out / "metrics.json").read_text())
    names = [model["name"] for model in saved["models"]]
    assert names == ["debug-reconstructor", "other-model"] and [obj["id"] for obj in saved["objects"]] == ["soccerball"]
    results = saved["objects"][0]["results"]
    assert set(results) == set(names)
    delta = saved["deltas"]["other-model"]
    assert delta["baseline"] == "debug-reconstructor"
    for key in ("psnr", "ssim", "lpips", "clip_image", "clip_text", "chamfer", "fscore"):
        assert delta[key]["mean"] == pytest.approx(results["other-model"][key] - results["debug-reconstructor"][key], abs=1e-9)
    report = (out / "report.md").read_text()
    assert "Δ `other-model` − `debug-reconstructor`" in report and "Evaluation: `debug-reconstructor` vs `other-model`" in report
    row = next(line for line in report.splitlines() if line.startswith("| 1 |"))
    assert row.count(" / ") == 7  # both models' values in every metric cell
    assert_valid_png(out / "figures" / "views-000-soccerball.png")
    with Image.open(out / "figures" / "views-000-soccerball.png") as grid:  # rows: truth + 2 models
        assert grid.size[1] > 3 * 64

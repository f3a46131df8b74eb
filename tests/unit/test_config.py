"""Typed configs: presets, overrides from files, and rejection of bad keys and values."""

import pytest

from vf3d import config


@pytest.mark.parametrize("name", list(config.RECONSTRUCTOR_PRESETS))
def test_every_preset_validates_and_round_trips_through_a_dict(name):
    preset = config.preset(config.RECONSTRUCTOR_PRESETS, name).validate()
    assert config.from_dict(config.ReconstructorConfig, config.to_dict(preset)) == preset
    assert config.preset(config.INFERENCE_PRESETS, name).validate()


def test_presets_are_listed_debug_first_and_return_fresh_objects():
    assert list(config.RECONSTRUCTOR_PRESETS)[0] == "debug"
    first = config.preset(config.RECONSTRUCTOR_PRESETS, "debug")
    first.transformer.width = 7
    assert config.preset(config.RECONSTRUCTOR_PRESETS, "debug").transformer.width == 64


def test_vfusion3d_preset_is_the_released_architecture():
    c = config.preset(config.RECONSTRUCTOR_PRESETS, "vfusion3d")
    assert (c.encoder.hidden_size, c.encoder.num_layers, c.encoder.num_heads, c.encoder.patch_size, c.encoder.image_size) == (768, 12, 12, 14, 512)
    assert (c.transformer.width, c.transformer.num_layers, c.transformer.num_heads, c.transformer.camera_embed_dim) == (1024, 16, 16, 1024)
    assert (c.triplane.token_resolution, c.triplane.resolution, c.triplane.channels) == (32, 64, 80)
    assert (c.decoder.hidden_width, c.decoder.num_layers) == (64, 4)
    assert (c.renderer.num_coarse_samples, c.renderer.num_fine_samples, c.renderer.render_size) == (64, 64, 384)
    assert c.source_camera_distance == 1.0 and c.mesh_iso == 1.0


def test_unknown_keys_are_rejected_with_their_path(tmp_path):
    path = tmp_path / "override.yaml"
    path.write_text("transformer:\n  width: 128\n  depth: 3\n")
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) in transformer: depth"):
        config.resolve(config.RECONSTRUCTOR_PRESETS, "debug", path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("transformer:\n  width: wide\n", "transformer.width: expected an integer"),
        ("renderer:\n  num_coarse_samples: 1.5\n", "expected an integer"),
        ("transformer: 3\n", "transformer: expected a mapping"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("transformer: [\n", "cannot parse"),
        ("transformer:\n  num_heads: 5\n", "divisible"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.resolve(config.RECONSTRUCTOR_PRESETS, "debug", path)


def test_overrides_apply_on_top_of_the_preset(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("mesh_resolution: 96\nmesh_iso: auto\n")
    resolved = config.resolve(config.INFERENCE_PRESETS, "debug", path)
    assert resolved.mesh_resolution == 96 and resolved.mesh_iso == "auto" and resolved.turntable_views == 16


def test_unknown_preset_names_the_choices():
    with pytest.raises(config.ConfigError, match="choose one of: debug, small, base, vfusion3d"):
        config.preset(config.RECONSTRUCTOR_PRESETS, "huge")


def test_config_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, vf3d.config, vf3d.cli; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("table, cls", [(config.SYNTHESIZE_PRESETS, config.SynthesizeConfig), (config.TRAIN_FILTER_PRESETS, config.TrainFilterConfig), (config.RENDER_ASSETS_PRESETS, config.RenderAssetsConfig)])
def test_pipeline_presets_round_trip_through_a_dict(table, cls):
    assert list(table)[0] == "debug"
    for name in table:
        preset = config.preset(table, name)
        assert config.from_dict(cls, config.to_dict(preset)) == preset


def test_the_readme_cluster_config_for_synthesize_is_valid(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("# synthesize-cluster.yaml", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "synthesize-cluster.yaml"
    path.write_text(block)
    resolved = config.resolve(config.SYNTHESIZE_PRESETS, "cluster", path)
    assert resolved.generate_pool.max_actors == 128 and resolved.filter.probe_path == "/mnt/models/quality-probe"


def test_synthesize_config_rejects_bad_pools_and_faults():
    with pytest.raises(config.ConfigError, match="min_actors <= initial_actors <= max_actors"):
        config.merge(config.preset(config.SYNTHESIZE_PRESETS, "debug"), {"generate_pool": {"min_actors": 3, "max_actors": 2}}).validate()
    with pytest.raises(config.ConfigError, match="fault.kill_stage"):
        config.merge(config.preset(config.SYNTHESIZE_PRESETS, "debug"), {"fault": {"kill_stage": "writer"}}).validate()
    with pytest.raises(config.ConfigError, match="elevation_range_deg"):
        config.merge(config.preset(config.SYNTHESIZE_PRESETS, "debug"), {"generation": {"elevation_range_deg": [40, 10]}}).validate()

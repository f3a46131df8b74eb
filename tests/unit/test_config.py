"""Typed configs: presets, overrides from files, and rejection of bad keys and values."""

import importlib
from pathlib import Path

import pytest

from vf3d import config
from vf3d.evaluation.config import EVALUATE_PRESETS
from vf3d.models.reconstructor.config import INFERENCE_PRESETS, RECONSTRUCTOR_PRESETS, InferenceConfig, ReconstructorConfig
from vf3d.serving.config import SERVE_PRESETS
from vf3d.synthesis.config import (
    RENDER_ASSETS_PRESETS,
    SYNTHESIZE_PRESETS,
    TRAIN_FILTER_PRESETS,
    RenderAssetsConfig,
    SynthesizeConfig,
    TrainFilterConfig,
)
from vf3d.training.config import FINETUNE_VIDEO_PRESETS, TRAIN_RECON_PRESETS, TrainingConfig


@pytest.mark.parametrize("name", list(RECONSTRUCTOR_PRESETS))
def test_every_preset_validates_and_round_trips_through_a_dict(name):
    preset = config.preset(RECONSTRUCTOR_PRESETS, name).validate()
    assert config.from_dict(ReconstructorConfig, config.to_dict(preset)) == preset
    assert config.preset(INFERENCE_PRESETS, name).validate()


def test_presets_are_listed_debug_first_and_return_fresh_objects():
    assert list(RECONSTRUCTOR_PRESETS)[0] == "debug"
    first = config.preset(RECONSTRUCTOR_PRESETS, "debug")
    first.transformer.width = 7
    assert config.preset(RECONSTRUCTOR_PRESETS, "debug").transformer.width == 64


def test_vfusion3d_preset_is_the_released_architecture():
    c = config.preset(RECONSTRUCTOR_PRESETS, "vfusion3d")
    assert (c.encoder.hidden_size, c.encoder.num_layers, c.encoder.num_heads, c.encoder.patch_size, c.encoder.image_size) == (
        768,
        12,
        12,
        14,
        512,
    )
    assert (c.transformer.width, c.transformer.num_layers, c.transformer.num_heads, c.transformer.camera_embed_dim) == (1024, 16, 16, 1024)
    assert (c.triplane.token_resolution, c.triplane.resolution, c.triplane.channels) == (32, 64, 80)
    assert (c.decoder.hidden_width, c.decoder.num_layers) == (64, 4)
    assert (c.renderer.num_coarse_samples, c.renderer.num_fine_samples, c.renderer.render_size) == (64, 64, 384)
    assert c.source_camera_distance == 1.0 and c.mesh_iso == 1.0


def test_unknown_keys_are_rejected_with_their_path(tmp_path):
    path = tmp_path / "override.yaml"
    path.write_text("transformer:\n  width: 128\n  depth: 3\n")
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) in transformer: depth"):
        config.resolve(RECONSTRUCTOR_PRESETS, "debug", path)


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
        config.resolve(RECONSTRUCTOR_PRESETS, "debug", path)


def test_overrides_apply_on_top_of_the_preset(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("mesh_resolution: 96\nmesh_iso: auto\n")
    resolved = config.resolve(INFERENCE_PRESETS, "debug", path)
    assert resolved.mesh_resolution == 96 and resolved.mesh_iso == "auto" and resolved.turntable_views == 16


def test_unknown_preset_names_the_choices():
    with pytest.raises(config.ConfigError, match="choose one of: debug, small, base, vfusion3d"):
        config.preset(RECONSTRUCTOR_PRESETS, "huge")


def test_config_modules_import_nothing_heavy():
    import subprocess
    import sys

    modules = ", ".join([*CONFIG_MODULES, "vf3d.cli"])
    code = f"import sys, {modules}; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize(
    "table, cls",
    [
        (SYNTHESIZE_PRESETS, SynthesizeConfig),
        (TRAIN_FILTER_PRESETS, TrainFilterConfig),
        (RENDER_ASSETS_PRESETS, RenderAssetsConfig),
    ],
)
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
    resolved = config.resolve(SYNTHESIZE_PRESETS, "cluster", path)
    assert resolved.generate_pool.max_actors == 128 and resolved.filter.probe_path == "/mnt/models/quality-probe"


def test_synthesize_config_rejects_bad_pools_and_faults():
    with pytest.raises(config.ConfigError, match="min_actors <= initial_actors <= max_actors"):
        config.merge(config.preset(SYNTHESIZE_PRESETS, "debug"), {"generate_pool": {"min_actors": 3, "max_actors": 2}}).validate()
    with pytest.raises(config.ConfigError, match="fault.kill_stage"):
        config.merge(config.preset(SYNTHESIZE_PRESETS, "debug"), {"fault": {"kill_stage": "writer"}}).validate()
    with pytest.raises(config.ConfigError, match="elevation_range_deg"):
        config.merge(config.preset(SYNTHESIZE_PRESETS, "debug"), {"generation": {"elevation_range_deg": [40, 10]}}).validate()


# ---------------------------------------------------------------------------------------------
# Declared choices and bounds, checked by one walker over the whole config tree
# ---------------------------------------------------------------------------------------------

CONFIG_MODULES = sorted(
    ".".join(("vf3d", *path.relative_to(Path(config.__file__).parent).with_suffix("").parts))
    for path in Path(config.__file__).parent.rglob("config.py")
)
"""vf3d.config and every component's config module beside it (found on disk, so a new one is included)."""
PRESET_TABLES = {
    name: table for module in CONFIG_MODULES for name, table in vars(importlib.import_module(module)).items() if name.endswith("_PRESETS")
}


def test_every_stage_has_its_preset_table():
    assert len(CONFIG_MODULES) == 9
    assert set(PRESET_TABLES) == {
        "RECONSTRUCTOR_PRESETS",
        "INFERENCE_PRESETS",
        "VIDEO_MODEL_PRESETS",
        "RENDER_ASSETS_PRESETS",
        "TRAIN_FILTER_PRESETS",
        "SYNTHESIZE_PRESETS",
        "FINETUNE_VIDEO_PRESETS",
        "TRAIN_RECON_PRESETS",
        "SERVE_PRESETS",
        "EVALUATE_PRESETS",
    }


NEEDS_LOCAL_WEIGHTS = {("TRAIN_FILTER_PRESETS", "dinov2-base"): {"encoder": {"encoder": {"pretrained_path": "/weights/dinov2-base"}}}}


@pytest.mark.parametrize("table, name", [(table, name) for table in PRESET_TABLES for name in PRESET_TABLES[table]])
def test_every_preset_of_every_table_validates_and_round_trips(table, name):
    preset = config.merge(config.preset(PRESET_TABLES[table], name), NEEDS_LOCAL_WEIGHTS.get((table, name), {}))
    assert preset.validate() is preset
    assert config.from_dict(type(preset), config.to_dict(preset)) == preset


def test_a_preset_without_its_local_weights_names_the_missing_path():
    with pytest.raises(config.ConfigError, match=r"^encoder\.encoder\.pretrained_path is required"):
        config.preset(TRAIN_FILTER_PRESETS, "dinov2-base").validate()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"generation": {"precision": "fp16"}}, "generation.precision: expected one of 'auto', 'bf16', 'fp32', got 'fp16'"),
        (
            {"generation": {"image_mask_method": "sam"}},
            "generation.image_mask_method: expected one of 'auto', 'rembg', 'estimate', 'none', got 'sam'",
        ),
        (
            {"fault": {"kill_stage": "writer"}},
            "fault.kill_stage: expected one of 'first_frame', 'generate', 'mask', 'filter' or null, got 'writer'",
        ),
    ],
)
def test_a_literal_field_refuses_an_unknown_choice_naming_path_value_and_choices(overrides, message):
    debug = config.preset(SYNTHESIZE_PRESETS, "debug")
    with pytest.raises(config.ConfigError) as error:
        config.merge(debug, overrides)
    assert str(error.value) == message


def test_literal_choices_keep_their_type_and_are_checked_on_validate_too():
    training = TrainingConfig()
    with pytest.raises(config.ConfigError, match=r"^deepspeed\.zero_stage: expected one of 0, 2, 3, got '2'$"):
        config.merge(training, {"deepspeed": {"zero_stage": "2"}})
    with pytest.raises(config.ConfigError, match=r"^scaling\.use_gpu: expected true/false or 'auto', got 'yes'$"):
        config.merge(training, {"scaling": {"use_gpu": "yes"}})
    assert config.merge(training, {"scaling": {"use_gpu": False}}).validate().scaling.use_gpu is False
    assert training.checkpoint.upload == "async" and config.merge(training, {"checkpoint": {"upload": "sync"}}).checkpoint.upload == "sync"
    with pytest.raises(config.ConfigError, match=r"^checkpoint\.upload: expected one of 'async', 'sync', got 'later'$"):
        config.merge(training, {"checkpoint": {"upload": "later"}})
    with pytest.raises(config.ConfigError, match=r"^mesh_iso: expected a number, 'auto' or null, got 'high'$"):
        config.merge(InferenceConfig(), {"mesh_iso": "high"})
    # A value set in code, not read from a file, is checked by validate() with the same message.
    training.optimizer.schedule = "linear"
    with pytest.raises(config.ConfigError, match=r"^optimizer\.schedule: expected one of 'cosine', 'constant', got 'linear'$"):
        training.validate()


@pytest.mark.parametrize(
    "table, overrides, message",
    [
        (TRAIN_RECON_PRESETS, {"training": {"run": {"batch_size": 0}}}, "training.run.batch_size must be >= 1, got 0"),
        (
            TRAIN_RECON_PRESETS,
            {"training": {"optimizer": {"betas": [0.9, 1.0]}}},
            "training.optimizer.betas[1] must be in [0, 1), got 1.0",
        ),
        (INFERENCE_PRESETS, {"foreground_ratio": 0}, "foreground_ratio must be in (0, 1], got 0.0"),
        (INFERENCE_PRESETS, {"mesh_resolution": 2000}, "mesh_resolution must be between 8 and 1024, got 2000"),
        (
            SYNTHESIZE_PRESETS,
            {"generation": {"elevation_range_deg": [0, 95]}},
            "generation.elevation_range_deg[1] must be in (-90, 90), got 95.0",
        ),
        (
            SYNTHESIZE_PRESETS,
            {"generation": {"elevation_range_deg": [10]}},
            "generation.elevation_range_deg must be a list of 2 values, got [10.0]",
        ),
        (SERVE_PRESETS, {"model": {"num_gpus": -1}}, "model.num_gpus must be >= 0, got -1.0"),
        (EVALUATE_PRESETS, {"limit": 0}, "limit must be >= 1, got 0"),
    ],
)
def test_a_declared_bound_refuses_naming_the_path_and_the_value(table, overrides, message):
    with pytest.raises(config.ConfigError) as error:
        config.merge(config.preset(table, "debug"), overrides).validate()
    assert str(error.value) == message


def test_optional_bounded_fields_accept_null():
    assert config.merge(config.preset(EVALUATE_PRESETS, "debug"), {"limit": None, "resolution": None}).validate().limit is None


def test_the_walker_reaches_nested_configs_and_lists_of_them():
    recon = config.preset(TRAIN_RECON_PRESETS, "debug")
    stage = {"name": "high", "steps": 80, "data": "3d", "render_resolution": 48, "crop_size": 32, "pixel_loss": True}
    with pytest.raises(config.ConfigError, match=r"^stages\[1\]\.data: expected one of 'synthetic', '3d', got 'real'$"):
        config.merge(recon, {"stages": [config.to_dict(recon.stages[0]), {**stage, "data": "real"}]})
    with pytest.raises(config.ConfigError, match=r"^stages\[1\]\.steps must be >= 1, got 0$"):
        config.merge(recon, {"stages": [config.to_dict(recon.stages[0]), {**stage, "steps": 0}]}).validate()
    with pytest.raises(config.ConfigError, match=r"^stages\[1\]\.crop_size must be <= stages\[1\]\.render_resolution, got 64$"):
        config.merge(recon, {"stages": [config.to_dict(recon.stages[0]), {**stage, "crop_size": 64}]}).validate()
    recon.stages[0].data = "real"  # set in code: validate() walks into the list too
    with pytest.raises(config.ConfigError, match=r"^stages\[0\]\.data: expected one of"):
        recon.validate()

    # Cross-field rules of a nested config name their fields from the root, and validate(path) prefixes them.
    recon = config.preset(TRAIN_RECON_PRESETS, "debug")
    recon.model.transformer.num_heads = 5
    divisible = r"^model\.transformer\.width must be divisible by model\.transformer\.num_heads, got 64 and 5$"
    with pytest.raises(config.ConfigError, match=divisible):
        recon.validate()
    with pytest.raises(config.ConfigError, match=r"^transformer\.width must be divisible by transformer\.num_heads"):
        recon.model.validate()
    with pytest.raises(config.ConfigError, match=r"^train\.model\.transformer\.width must be divisible"):
        recon.validate("train")
    video = config.preset(FINETUNE_VIDEO_PRESETS, "debug")
    video.model.architecture.patch_size = [1, 0, 2]
    with pytest.raises(config.ConfigError, match=r"^model\.architecture\.patch_size\[1\] must be >= 1, got 0$"):
        video.validate()


def test_cross_field_rules_run_after_the_fields_they_read_are_checked():
    serve = config.preset(SERVE_PRESETS, "debug")
    with pytest.raises(config.ConfigError, match=r"^need model\.min_replicas <= initial_replicas <= max_replicas, got 3 <= 3 <= 2$"):
        config.merge(serve, {"model": {"min_replicas": 3, "max_replicas": 2}}).validate()
    fail_rank = r"^training\.fault_injection\.fail_rank must be a rank below training\.scaling\.num_workers$"
    with pytest.raises(config.ConfigError, match=fail_rank):
        config.merge(config.preset(FINETUNE_VIDEO_PRESETS, "debug"), {"training": {"fault_injection": {"fail_rank": 2}}}).validate()
    # A zero divisor is refused by its bound before the divisibility rule could divide by it.
    with pytest.raises(config.ConfigError, match=r"^encoder\.num_heads must be >= 1, got 0$"):
        config.merge(config.preset(RECONSTRUCTOR_PRESETS, "debug"), {"encoder": {"num_heads": 0}}).validate()


def test_bounded_choices_and_rules_compose_on_any_config_dataclass():
    from dataclasses import dataclass
    from typing import Literal

    @dataclass
    class Pool(config.ConfigBase):
        low: int = config.bounded(1, ge=1)
        high: int = config.bounded(4, ge=1)
        mode: Literal["fast", "safe"] = "safe"

        def rules(self, at):
            return [(self.low <= self.high, f"{at.low} must be <= {at.high}")]

    @dataclass
    class Job(config.ConfigBase):
        pools: list[Pool] = config.bounded(factory=lambda: [Pool()])
        share: float = config.bounded(0.5, gt=0, le=1)

    assert Job().validate() == Job()
    with pytest.raises(config.ConfigError, match=r"^pools\[0\]\.high must be >= 1, got 0$"):
        config.from_dict(Job, {"pools": [{"high": 0}]}).validate()
    with pytest.raises(config.ConfigError, match=r"^pools\[1\]\.low must be <= pools\[1\]\.high$"):
        config.from_dict(Job, {"pools": [{}, {"low": 5}]}).validate()
    with pytest.raises(config.ConfigError, match=r"^pools\[0\]\.mode: expected one of 'fast', 'safe', got 'slow'$"):
        config.from_dict(Job, {"pools": [{"mode": "slow"}]})
    with pytest.raises(config.ConfigError, match=r"^share must be in \(0, 1\], got 1\.5$"):
        Job(share=1.5).validate()


def test_inference_defaults_follow_the_model_and_the_device():
    """Unset mesh and turntable sizes come from the model directory's config and, on the CPU, stay
    small enough for a turntable of about a minute; a preset's numbers win over both."""
    release = config.preset(RECONSTRUCTOR_PRESETS, "vfusion3d")
    debug = config.preset(RECONSTRUCTOR_PRESETS, "debug")
    auto = config.preset(INFERENCE_PRESETS, "auto")

    on_gpu = auto.for_model(release, "cuda")
    assert (on_gpu.mesh_resolution, on_gpu.turntable_views, on_gpu.turntable_size) == (384, 160, 384)
    on_cpu = auto.for_model(release, "cpu")
    assert (on_cpu.mesh_resolution, on_cpu.turntable_views, on_cpu.turntable_size) == (
        384,
        auto.cpu_turntable_views,
        auto.cpu_turntable_size,
    )
    small_model = auto.for_model(debug, "cpu")
    assert (small_model.mesh_resolution, small_model.turntable_size) == (debug.mesh_resolution, debug.renderer.render_size)

    assert on_gpu.turntable_fps == 40 and on_cpu.turntable_fps == round(auto.cpu_turntable_views / 4), "a 4-s revolution"
    preset = config.preset(INFERENCE_PRESETS, "debug").for_model(release, "cpu")
    assert (preset.mesh_resolution, preset.turntable_views, preset.turntable_fps) == (64, 16, 8)
    assert auto.mesh_resolution is None, "for_model returns a copy"


def test_a_model_config_written_before_mesh_resolution_existed_loads_with_the_release_value():
    written = config.to_dict(config.preset(RECONSTRUCTOR_PRESETS, "vfusion3d"))
    del written["mesh_resolution"]
    assert config.from_dict(ReconstructorConfig, written).mesh_resolution == 384

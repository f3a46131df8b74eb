"""The orbit video model (models/video): conditioning, training, sampling, save/load, widening.

Real diffusers and transformers models at tiny size; no mocks.
"""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import CLIPTextModel, CLIPTokenizer

from vf3d import cameras
from vf3d import config as config_lib
from vf3d.models.video import (
    ElevationEmbedder,
    FirstFrameGenerator,
    OrbitVideoModel,
    OrbitVideoPipeline,
    build_first_frame_generator,
    build_video_pipeline,
    close_orbit,
    orbit_video_frames,
)
from vf3d.models.video.conditioning import decode_latents, encode_video, vae_compression
from vf3d.models.video.config import VIDEO_MODEL_PRESETS, VideoModelConfig
from vf3d.models.video.pipeline import predict_velocity
from vf3d.models.video.text import clip_tokenizer, random_clip_text_encoder

ELEVATION = 20.0


@pytest.fixture
def video_config():
    return config_lib.preset(VIDEO_MODEL_PRESETS, "debug")


@pytest.fixture(scope="module")
def pipeline():
    """A debug pipeline for the sampling tests (never trained, so tests may share it)."""
    return build_video_pipeline(config_lib.preset(VIDEO_MODEL_PRESETS, "debug"))


def sphere_orbit(num_views=16, size=32, elevation=ELEVATION):
    """A shaded sphere whose colour follows longitude, seen from an orbit: [V, 3, S, S] in [0, 1].

    Rays come from cameras.py, so the views sit exactly where `orbit_cameras` says they do.
    """
    render_cameras = cameras.render_camera_vector(cameras.orbit_poses(num_views, elevation, cameras.RENDER_RADIUS))
    origins, directions = cameras.generate_rays(render_cameras, size)
    half_b = (origins * directions).sum(-1)
    discriminant = half_b**2 - ((origins**2).sum(-1) - 0.7**2)
    depth = -half_b - discriminant.clamp_min(0).sqrt()
    normals = torch.nn.functional.normalize(origins + depth[..., None] * directions, dim=-1)
    longitude = torch.atan2(normals[..., 1], normals[..., 0])
    albedo = torch.stack([0.5 + 0.5 * torch.cos(longitude), 0.5 + 0.5 * torch.sin(2 * longitude), 0.5 + 0.5 * normals[..., 2]], dim=-1)
    shading = 0.35 + 0.65 * (normals * -directions).sum(-1, keepdim=True).clamp_min(0)
    rgb = torch.where((discriminant > 0)[..., None], albedo * shading, torch.ones_like(albedo))
    return rgb.reshape(num_views, size, size, 3).permute(0, 3, 1, 2)


def first_frame_image(view=0):
    return (sphere_orbit()[view].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def trained_names(model):
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


# --- layout and config -----------------------------------------------------------------------


def test_debug_pipeline_layout(pipeline):
    latent_channels = pipeline.vae.config.z_dim
    assert vae_compression(pipeline.vae) == (4, 4)  # Wan's 4× temporal compression, kept at debug size
    # noisy latents + one mask channel per pixel frame of a latent frame + first-frame latent
    assert pipeline.transformer.config.in_channels == 2 * latent_channels + 4
    assert pipeline.transformer.config.out_channels == latent_channels
    assert orbit_video_frames(16) == 17
    with pytest.raises(ValueError, match="multiple of 4"):
        orbit_video_frames(15)
    frames = sphere_orbit()[None]
    closed = close_orbit(frames)
    assert closed.shape[1] == 17 and torch.equal(closed[:, 16], frames[:, 0])
    with torch.no_grad():
        latents = encode_video(pipeline.vae, closed.transpose(1, 2))
        first_alone = encode_video(pipeline.vae, frames[:, :1].transpose(1, 2))
    assert latents.shape == (1, latent_channels, 5, 8, 8)
    # The VAE is causal: latent frame 0 is view 0 alone, exactly what sampling encodes as the condition.
    torch.testing.assert_close(latents[:, :, :1], first_alone, rtol=1e-5, atol=1e-6)


def test_presets_validate_and_lora_is_a_clear_error(video_config):
    assert list(VIDEO_MODEL_PRESETS)[0] == "debug"
    for name in VIDEO_MODEL_PRESETS:
        preset = config_lib.preset(VIDEO_MODEL_PRESETS, name).validate()
        assert config_lib.from_dict(VideoModelConfig, config_lib.to_dict(preset)) == preset
    video_config.trainable = "lora"
    with pytest.raises(config_lib.ConfigError, match="peft"):
        video_config.validate()
    video_config.trainable, video_config.num_views = "temporal", 10
    with pytest.raises(config_lib.ConfigError, match="multiple of 4"):
        video_config.validate()


def test_full_presets_need_a_pretrained_directory(tmp_path):
    config = config_lib.preset(VIDEO_MODEL_PRESETS, "wan2.1-1.3b")
    with pytest.raises(config_lib.ConfigError, match="pretrained_path is required"):
        build_video_pipeline(config)
    with pytest.raises(config_lib.ConfigError, match="text_to_image_path is required"):
        build_first_frame_generator(config)
    config.pretrained_path = str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="no model_index.json"):
        build_video_pipeline(config)


# --- training --------------------------------------------------------------------------------


def test_temporal_mode_trains_only_self_attention_patch_embedding_and_elevation(video_config):
    model = OrbitVideoModel.from_config(video_config)  # the debug preset trains "temporal"
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("transformer.patch_embedding.", "elevation_embedder.")) or ".attn1." in name
    }
    assert trained_names(model) == expected
    assert any(".attn1.to_q." in name for name in expected) and any(".attn1.to_out.0." in name for name in expected)

    frames = sphere_orbit()[None].repeat(2, 1, 1, 1, 1)
    loss = model.training_loss(frames, ["a ball", "a sphere"], torch.tensor([ELEVATION, 30.0]), generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    with_grad = {name for name, parameter in model.named_parameters() if parameter.grad is not None}
    assert with_grad == expected
    assert model.transformer.patch_embedding.weight.grad.abs().sum() > 0


def test_full_mode_gives_every_trainable_parameter_a_gradient(video_config):
    model = OrbitVideoModel.from_config(video_config)
    parameters = model.trainable_parameters("full")
    frozen = [name for name, _ in model.named_parameters() if name.startswith(("vae.", "text_encoder."))]
    assert len(parameters) == sum(1 for _ in model.named_parameters()) - len(frozen)
    assert not model.vae.training and not model.text_encoder.training
    model.train()
    assert model.transformer.training and not model.vae.training and not model.text_encoder.training
    model(sphere_orbit()[None], ["a ball"], torch.tensor([ELEVATION])).backward()
    assert all(parameter.grad is not None for parameter in parameters)
    assert all(parameter.grad is None for name, parameter in model.named_parameters() if name in frozen)
    with pytest.raises(ValueError, match="peft"):
        model.trainable_parameters("lora")
    with pytest.raises(ValueError, match="do not tile"):
        model.training_loss(torch.rand(1, 16, 3, 30, 30), ["a ball"], torch.tensor([ELEVATION]))


def test_gradient_checkpointing_gives_the_same_gradients(video_config):
    gradients = []
    for checkpointing in (False, True):
        video_config.gradient_checkpointing = checkpointing
        model = OrbitVideoModel.from_config(video_config)
        assert model.transformer.gradient_checkpointing == checkpointing
        model.train()
        model.training_loss(
            sphere_orbit()[None], ["a ball"], torch.tensor([ELEVATION]), generator=torch.Generator().manual_seed(3)
        ).backward()
        gradients.append(model.transformer.blocks[0].attn1.to_q.weight.grad)
    torch.testing.assert_close(gradients[0], gradients[1])


def test_training_overfits_one_orbit(video_config):
    """25 Adam steps on one rendered orbit: the loss (measured on fixed noise) falls below half.

    Observed on the debug model: about 1.59 → 0.81 (15 steps) → 0.70 (20) → 0.60 (25) → 0.35 (40).
    """
    video_config.prompt_dropout = 0.0
    model = OrbitVideoModel.from_config(video_config)
    optimizer = torch.optim.Adam(model.trainable_parameters("full"), lr=3e-3)
    frames, prompts, elevations = sphere_orbit()[None], ["a colourful ball"], torch.tensor([ELEVATION])

    def held_out_loss():
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        model.training_loss(frames.expand(4, -1, -1, -1, -1), prompts * 4, elevations.expand(4), generator=generator).item()
                        for _ in range(4)
                    ]
                )
            )

    generator = torch.Generator().manual_seed(0)
    curve = [held_out_loss()]
    for _ in range(25):
        loss = model.training_loss(frames.expand(2, -1, -1, -1, -1), prompts * 2, elevations.expand(2), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    curve.append(held_out_loss())
    print("held-out loss before and after:", [round(value, 3) for value in curve])
    assert curve[-1] < 0.5 * curve[0], curve


def test_elevation_embedder_starts_at_zero_and_learns(video_config):
    model = OrbitVideoModel.from_config(video_config)
    generator = torch.Generator().manual_seed(5)
    noisy, condition = torch.randn(2, 4, 5, 8, 8, generator=generator), torch.randn(2, 8, 5, 8, 8, generator=generator)
    text, timesteps, elevations = torch.randn(2, 32, 32, generator=generator), torch.tensor([700.0, 200.0]), torch.tensor([0.0, 40.0])

    def outputs():
        with torch.no_grad():
            with_elevation = predict_velocity(model.transformer, model.elevation_embedder, noisy, condition, timesteps, text, elevations)
            without = model.transformer(
                hidden_states=torch.cat([noisy, condition], dim=1), timestep=timesteps, encoder_hidden_states=text, return_dict=False
            )[0]
        return with_elevation, without

    with_elevation, without = outputs()
    assert torch.equal(with_elevation, without)  # a pretrained model starts out exactly unchanged

    optimizer = torch.optim.Adam(model.trainable_parameters("temporal"), lr=1e-3)
    model.training_loss(sphere_orbit()[None], ["a ball"], torch.tensor([ELEVATION])).backward()
    assert model.elevation_embedder.linear_2.weight.grad.abs().sum() > 0  # gradients reach the embedder
    optimizer.step()
    with_elevation, without = outputs()
    assert not torch.allclose(with_elevation, without)
    assert model.elevation_embedder(elevations).abs().sum() > 0


# --- sampling --------------------------------------------------------------------------------


def generate(pipeline, images, prompts, elevations, seed):
    return pipeline.generate_orbit(images, prompts, elevations, steps=3, guidance=3.0, seed=seed)


def test_generate_orbit_shapes_cameras_and_first_frame(pipeline):
    images = [first_frame_image(0), first_frame_image(4)]
    output = generate(pipeline, images, ["a ball", "a globe"], [ELEVATION, 35.0], seed=0)
    assert output.frames.shape == (2, 16, 32, 32, 3) and output.frames.dtype == np.uint8
    assert output.cameras.shape == (2, 16, 25) and output.cameras.dtype == np.float32
    for index, elevation in enumerate([ELEVATION, 35.0]):
        expected = cameras.render_camera_vector(cameras.orbit_poses(16, elevation_deg=elevation, radius=1.5))
        torch.testing.assert_close(torch.from_numpy(output.cameras[index]), expected)
    # View 0 is the given image after a VAE round trip, not a generated frame.
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)[:, :, None].float() / 255
    with torch.no_grad():
        round_trip = decode_latents(pipeline.vae, encode_video(pipeline.vae, pixels))[:, :, 0]
    expected_first = (round_trip.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.abs(output.frames[:, 0].astype(int) - expected_first.astype(int)).max() <= 1
    assert np.abs(output.frames[:, 1:].astype(int) - expected_first[:, None].astype(int)).max() > 10  # the rest is generated


def test_generate_orbit_is_seeded_and_independent_of_batching(pipeline):
    images, prompts, elevations = [first_frame_image(0), first_frame_image(4)], ["a ball", "a globe"], [ELEVATION, 35.0]
    batched = generate(pipeline, images, prompts, elevations, seed=7).frames
    assert np.array_equal(batched, generate(pipeline, images, prompts, elevations, seed=7).frames)
    assert not np.array_equal(batched[:, 1:], generate(pipeline, images, prompts, elevations, seed=8).frames[:, 1:])
    for index in range(2):
        alone = generate(pipeline, images[index], prompts[index], elevations[index], seed=7 + index).frames
        assert np.abs(alone[0].astype(int) - batched[index].astype(int)).max() <= 1


def test_save_and_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    loaded = OrbitVideoPipeline.from_pretrained(tmp_path)
    assert loaded.config.resolution == 32 and loaded.config.num_views == 16
    arguments = ([first_frame_image(0)], ["a ball"], [ELEVATION])
    assert np.array_equal(generate(loaded, *arguments, seed=1).frames, generate(pipeline, *arguments, seed=1).frames)
    # Every component also loads with its own library's class.
    plain = {
        "transformer": WanTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer"),
        "vae": AutoencoderKLWan.from_pretrained(tmp_path, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(tmp_path / "text_encoder"),
        "elevation_embedder": ElevationEmbedder.from_pretrained(tmp_path, subfolder="elevation_embedder"),
    }
    for name, module in plain.items():
        original = getattr(pipeline, name).state_dict()
        assert module.state_dict().keys() == original.keys()
        assert all(torch.equal(module.state_dict()[key], original[key]) for key in original), name
    assert FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.shift == pipeline.scheduler.config.shift
    assert CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")(["a ball"]).input_ids == pipeline.tokenizer(["a ball"]).input_ids


def test_diffusers_generic_loader_loads_the_export_only_when_trusted(pipeline, tmp_path):
    """`DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`, what a diffusers user tries
    first, gives our pipeline through the directory's pipeline.py (diffusers' custom-pipeline
    convention); without the flag diffusers refuses to import it; our own class loads either way
    without running that file, and an export whose index names the class plainly still loads."""
    import json

    from diffusers import DiffusionPipeline

    pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "OrbitVideoPipeline"]
    assert "from vf3d.models.video.pipeline import OrbitVideoPipeline" in (tmp_path / "pipeline.py").read_text()

    loaded = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "OrbitVideoPipeline" and isinstance(loaded, OrbitVideoPipeline)
    arguments = ([first_frame_image(0)], ["a ball"], [ELEVATION])
    assert np.array_equal(generate(loaded, *arguments, seed=1).frames, generate(pipeline, *arguments, seed=1).frames)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path)

    # Our class never imports pipeline.py: replace it with code that would fail if it ran.
    (tmp_path / "pipeline.py").write_text("raise RuntimeError('pipeline.py was executed')\n")
    assert isinstance(OrbitVideoPipeline.from_pretrained(tmp_path), OrbitVideoPipeline)
    index["_class_name"] = "OrbitVideoPipeline"  # as exports before pipeline.py were written
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert isinstance(OrbitVideoPipeline.from_pretrained(tmp_path), OrbitVideoPipeline)


# --- first frames from prompts ---------------------------------------------------------------


def test_text_to_image_debug_stage(video_config, tmp_path):
    generator = build_first_frame_generator(video_config)
    prompts = ["a red teapot", "a wooden chair"]
    images = generator(prompts, seed=0)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, generator(prompts, seed=0))
    assert np.array_equal(images[1], generator(prompts[1:], seed=1)[0])  # image i uses seed + i
    generator.save_pretrained(tmp_path)
    video_config.text_to_image_path = str(tmp_path)
    loaded = build_first_frame_generator(video_config)
    assert isinstance(loaded, FirstFrameGenerator) and type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    assert np.array_equal(loaded(prompts, seed=0), images)


# --- starting from a pretrained text-to-video model ------------------------------------------


def test_widening_a_pretrained_text_to_video_model_keeps_its_output(video_config, tmp_path):
    architecture = video_config.architecture
    torch.manual_seed(0)
    tokenizer = clip_tokenizer(video_config.max_text_tokens)
    transformer = WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=architecture.text_hidden_size,
        ffn_dim=48,
        num_layers=2,
    )
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
        scale_factor_spatial=4,
    )
    text_encoder = random_clip_text_encoder(architecture, video_config.max_text_tokens, tokenizer)
    WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    ).save_pretrained(tmp_path / "wan-t2v")

    video_config.random_init, video_config.pretrained_path = False, str(tmp_path / "wan-t2v")
    widened = build_video_pipeline(video_config)
    assert widened.transformer.config.in_channels == 12
    original = WanTransformer3DModel.from_pretrained(tmp_path / "wan-t2v", subfolder="transformer")

    generator = torch.Generator().manual_seed(0)
    noisy, text, timesteps = (
        torch.randn(2, 4, 5, 8, 8, generator=generator),
        torch.randn(2, 32, 32, generator=generator),
        torch.tensor([900.0, 100.0]),
    )
    with torch.no_grad():
        reference = original(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=text, return_dict=False)[0]
        for extra in (torch.zeros(2, 8, 5, 8, 8), torch.randn(2, 8, 5, 8, 8, generator=generator)):
            # The new channels have zero weights and the elevation embedder starts at zero.
            output = predict_velocity(
                widened.transformer, widened.elevation_embedder, noisy, extra, timesteps, text, torch.tensor([0.0, 45.0])
            )
            torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-6)

    widened.save_pretrained(tmp_path / "orbit")
    assert WanTransformer3DModel.from_pretrained(tmp_path / "orbit", subfolder="transformer").config.in_channels == 12
    video_config.pretrained_path = str(tmp_path / "orbit")  # a saved orbit model loads as it is
    reloaded = build_video_pipeline(video_config)
    assert isinstance(reloaded, OrbitVideoPipeline) and reloaded.transformer.config.in_channels == 12
    assert reloaded.generate_orbit(first_frame_image(), "a ball", ELEVATION, steps=2, guidance=1.0).frames.shape == (1, 16, 32, 32, 3)


# --- a fitted VAE for random_init models (vae_path) ---------------------------------------------


def small_vae(base_dim=8, z_dim=4):
    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
        scale_factor_temporal=4,
        scale_factor_spatial=4,
    )


def test_unclamped_decoding_is_decode_before_its_clamp():
    """`decode_unclamped` follows diffusers' decode loop; this fails if that loop changes."""
    from vf3d.models.video.vae import decode_unclamped

    vae = small_vae().eval()
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        raw = decode_unclamped(vae, latents)
        decoded = vae.decode(latents).sample
    assert raw.shape == decoded.shape == (2, 3, 9, 32, 32)
    torch.testing.assert_close(raw.clamp(-1, 1), decoded)


@pytest.mark.heavy
def test_fitting_a_vae_makes_it_reconstruct_orbits_and_records_latent_statistics():
    from vf3d.models.video.vae import fit_vae, psnr

    videos = close_orbit(torch.stack([sphere_orbit(num_views=8), sphere_orbit(num_views=8, elevation=0.0)])).transpose(1, 2)
    vae = small_vae()
    with torch.no_grad():
        before = psnr(vae.decode(vae.encode(videos * 2 - 1).latent_dist.mode()).sample, videos * 2 - 1)
    fitted = fit_vae(vae, videos, steps=40, lr=3e-3, batch_size=2, log=lambda line: None)
    assert fitted["psnr"] > before + 3 and fitted["psnr"] > fitted["blank_psnr"] + 3, (before, fitted)
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 4
    assert not any(parameter.requires_grad for parameter in vae.parameters())


def test_a_random_init_model_loads_its_vae_from_vae_path(video_config, tmp_path):
    vae = small_vae(z_dim=6)
    vae.register_to_config(latents_mean=[0.1] * 6, latents_std=[2.0] * 6)
    vae.save_pretrained(tmp_path / "vae")
    video_config.vae_path = str(tmp_path / "vae")
    pipeline = build_video_pipeline(video_config)
    assert pipeline.vae.config.z_dim == 6 and pipeline.vae.config.latents_std == [2.0] * 6
    for name, value in vae.state_dict().items():
        torch.testing.assert_close(pipeline.vae.state_dict()[name], value)
    assert pipeline.transformer.config.out_channels == 6
    frames = torch.from_numpy(np.stack([first_frame_image()] * 2)).permute(0, 3, 1, 2)[None].float() / 255
    loss = OrbitVideoModel(pipeline).training_loss(torch.cat([frames] * 8, dim=1), ["a ball"], torch.tensor([ELEVATION]))
    assert torch.isfinite(loss)

    video_config.vae_path = str(tmp_path / "missing")
    with pytest.raises(config_lib.ConfigError, match="not a saved AutoencoderKLWan directory"):
        build_video_pipeline(video_config)
    video_config.vae_path, video_config.random_init = str(tmp_path / "vae"), False
    with pytest.raises(config_lib.ConfigError, match="vae_path is for random_init models"):
        video_config.validate()

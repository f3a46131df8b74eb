"""Tests for vf3d.models.release_weights: model directories, and the VFusion3D / OpenLRM importers and exporters."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vf3d import config as C
from vf3d.cameras import canonical_source_camera, orbit_poses, render_camera_vector
from vf3d.models.pretrained import ModelDirectoryError
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import (
    RECONSTRUCTOR_PRESETS,
    DecoderConfig,
    EncoderConfig,
    InferenceConfig,
    ReconstructorConfig,
    RendererConfig,
    TransformerConfig,
    TriplaneConfig,
)
from vf3d.models.reconstructor.decoder import activate_density
from vf3d.models.release_weights import (
    CheckpointFormatError,
    convert_state_dict,
    export_checkpoint,
    export_state_dict,
    import_checkpoint,
    installed_dinov2_attention_names,
    load_reconstructor,
    read_state_dict,
    save_reconstructor,
)


class NotATensor:
    """Module-level so torch.save can pickle it (and weights_only loading must refuse it)."""


def _seeded(config, seed=0):
    """A model whose every tensor holds distinct random values, so any swapped mapping shows."""
    torch.manual_seed(seed)
    model = Reconstructor(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def _inputs(config, batch=2, views=2):
    torch.manual_seed(123)
    size = config.encoder.image_size
    images = torch.rand(batch, 3, size, size)
    source = canonical_source_camera(config.source_camera_distance).expand(batch, 16)
    cameras = render_camera_vector(orbit_poses(views, elevation_deg=20.0)).expand(batch, views, 25)
    return images, source, cameras


def _outputs(model, config):
    images, source, cameras = _inputs(config)
    with torch.no_grad():
        planes = model.encode(images, source)
        views = model.render(planes, cameras, deterministic=True)
    return planes, views


def _assert_same_outputs(a, b):
    (planes_a, views_a), (planes_b, views_b) = a, b
    assert torch.equal(planes_a, planes_b)
    for name in ("rgb", "depth", "opacity"):
        assert torch.equal(getattr(views_a, name), getattr(views_b, name)), name


def _tiny(**changes):
    """Differs from the release in every inferable size; head counts and the rest are not inferable."""
    config = ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=24, num_layers=3, num_heads=3, mlp_ratio=2, patch_size=4, image_size=32, position_image_size=40),
        transformer=TransformerConfig(width=40, num_layers=3, num_heads=5, mlp_ratio=3.0, camera_embed_dim=20),
        triplane=TriplaneConfig(token_resolution=4, upsample_factor=3, channels=6),
        decoder=DecoderConfig(hidden_width=12, num_layers=3),
        renderer=RendererConfig(num_coarse_samples=8, num_fine_samples=8, render_size=16, ray_chunk_size=0),
    )
    return C.merge(config, changes)


# What shapes cannot tell, given to the importer the way a user would.
TINY_OVERRIDES = {
    "encoder": {"num_heads": 3, "image_size": 32},
    "transformer": {"num_heads": 5},
    "renderer": {"num_coarse_samples": 8, "num_fine_samples": 8, "render_size": 16, "ray_chunk_size": 0},
}


# VFusion3D imports keep the position-embedding interpolation the release was trained with.
RELEASE_ERA_ENCODER = {"encoder": {"position_interpolation": "scale_factor"}}


# ---------------------------------------------------------------------------------------------
# Model directories
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path):
    config = C.preset(RECONSTRUCTOR_PRESETS, "debug")
    model = _seeded(config)
    save_reconstructor(model, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_reconstructor(tmp_path / "model")
    assert loaded.config == config
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for name in original:
        assert torch.equal(original[name], reloaded[name]), name
    _assert_same_outputs(_outputs(model, config), _outputs(loaded, config))


def test_load_rejects_broken_directories(tmp_path):
    config = C.preset(RECONSTRUCTOR_PRESETS, "debug")
    good = save_reconstructor(_seeded(config), tmp_path / "good")

    no_config = tmp_path / "no_config"
    shutil.copytree(good, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ModelDirectoryError, match="config.json is missing"):
        load_reconstructor(no_config)

    malformed = tmp_path / "malformed"
    shutil.copytree(good, malformed)
    (malformed / "config.json").write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        load_reconstructor(malformed)

    other_type = tmp_path / "other_type"
    shutil.copytree(good, other_type)
    document = json.loads((other_type / "config.json").read_text())
    document["model_type"] = "vf3d-video-diffusion"
    (other_type / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelDirectoryError, match="vf3d-video-diffusion"):
        load_reconstructor(other_type)

    with pytest.raises(ModelDirectoryError, match="not found"):
        load_reconstructor(tmp_path / "nowhere")


def test_load_rejects_weights_of_another_size(tmp_path):
    config = C.preset(RECONSTRUCTOR_PRESETS, "debug")
    directory = save_reconstructor(_seeded(config), tmp_path / "model")
    bigger = C.merge(config, {"transformer": {"num_layers": 3}})
    other = save_reconstructor(_seeded(bigger), tmp_path / "bigger")
    shutil.copy(other / "model.safetensors", directory / "model.safetensors")
    with pytest.raises(ModelDirectoryError, match="does not match its config.*transformer.blocks.2"):
        load_reconstructor(directory)

    narrower = save_reconstructor(_seeded(C.merge(config, {"transformer": {"width": 32}})), tmp_path / "narrower")
    shutil.copy(narrower / "model.safetensors", directory / "model.safetensors")
    # Same keys, other shapes: the error names the tensor and both shapes.
    with pytest.raises((ModelDirectoryError, RuntimeError), match=r"transformer.triplane_queries.*\[1, 192, 32\].*\[1, 192, 64\]"):
        load_reconstructor(directory)


# ---------------------------------------------------------------------------------------------
# Reading weight files
# ---------------------------------------------------------------------------------------------


def test_read_state_dict_formats_and_refusals(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(state, tmp_path / "w.safetensors")
    for wrapper in ("model_state_dict", "state_dict", "model"):
        torch.save({wrapper: state, "epoch": 3}, tmp_path / f"{wrapper}.pth")
    torch.save(state, tmp_path / "flat.bin")
    (tmp_path / "dir").mkdir()
    save_file(state, tmp_path / "dir" / "model.safetensors")
    for name in ("w.safetensors", "model_state_dict.pth", "state_dict.pth", "model.pth", "flat.bin", "dir"):
        loaded = read_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), name

    torch.save({"model_state_dict": state, "obj": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointFormatError, match="weights_only=True.*unsafe unpickling"):
        read_state_dict(tmp_path / "unsafe.pt")
    torch.save({"model_state_dict": {"a": torch.zeros(1), "b": [1, 2]}}, tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError, match="not named tensors: 'b'"):
        read_state_dict(tmp_path / "list.pt")
    torch.save([torch.zeros(1)], tmp_path / "seq.pt")
    with pytest.raises(CheckpointFormatError, match="holds a list"):
        read_state_dict(tmp_path / "seq.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="unsupported checkpoint type '.npz'"):
        read_state_dict(tmp_path / "weights.npz")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointFormatError, match="without model.safetensors"):
        read_state_dict(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        read_state_dict(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------
# Import round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format", "changes"),
    [
        # VFusion3D encoders resize position embeddings as transformers <= 4.45 did.
        ("vfusion3d", RELEASE_ERA_ENCODER),
        # OpenLRM: DINOv2 with registers on un-normalised input; source camera at 2 on −Y, iso 3.
        (
            "openlrm",
            {
                "encoder": {"num_register_tokens": 4, "normalize_input": False},
                "source_camera_distance": 2.0,
                "source_camera_azimuth_deg": -90.0,
                "mesh_iso": 3.0,
            },
        ),
    ],
)
def test_import_round_trip_is_bit_exact(tmp_path, format, changes):
    config = _tiny(**changes)
    model = _seeded(config)
    released = export_state_dict(model, format)
    save_file({k: v.contiguous().clone() for k, v in released.items()}, tmp_path / "release.safetensors")
    torch.save({"model_state_dict": released, "epoch": 7}, tmp_path / "release.pth")
    expected = _outputs(model, config)
    for source in ("release.safetensors", "release.pth"):
        out = import_checkpoint(tmp_path / source, tmp_path / f"{source}.vf3d", format, overrides=TINY_OVERRIDES)
        document = json.loads((out / "config.json").read_text())
        assert document["imported_from"]["format"] == format and document["imported_from"]["file"].endswith(source)
        imported = load_reconstructor(out)
        assert imported.config == config
        ours, theirs = model.state_dict(), imported.state_dict()
        assert ours.keys() == theirs.keys()
        for name in ours:
            if format == "openlrm" and name.endswith("embeddings.mask_token"):
                # OpenLRM files carry no mask token: imported as zeros (it never acts on our inputs).
                assert not theirs[name].any()
            else:
                assert torch.equal(ours[name], theirs[name]), name
        _assert_same_outputs(expected, _outputs(imported, config))
        # Both files readable as the umask allows (safetensors alone writes 0600).
        modes = {name: (out / name).stat().st_mode & 0o777 for name in ("config.json", "model.safetensors")}
        assert modes["model.safetensors"] == modes["config.json"], modes


# OpenLRM's `_default_source_camera(dist_to_center=2.0)` (openlrm/runners/infer/lrm.py).
OPENLRM_SOURCE_CAMERA = [1, 0, 0, 0, 0, 0, -1, -2, 0, 1, 0, 0, 0.75, 0.75, 0.5, 0.5]


def test_imported_openlrm_model_is_conditioned_on_openlrms_source_camera(tmp_path):
    from vf3d.cameras import model_source_camera
    from vf3d.inference import ImageTo3D

    model = _seeded(_tiny(encoder={"num_register_tokens": 4, "normalize_input": False}))
    save_file({k: v.contiguous().clone() for k, v in export_state_dict(model, "openlrm").items()}, tmp_path / "openlrm.safetensors")
    imported = load_reconstructor(import_checkpoint(tmp_path / "openlrm.safetensors", tmp_path / "openlrm.vf3d", "openlrm", TINY_OVERRIDES))
    assert imported.config.source_camera_azimuth_deg == -90.0 and imported.config.source_camera_distance == 2.0
    openlrm = torch.tensor(OPENLRM_SOURCE_CAMERA, dtype=torch.float32)
    torch.testing.assert_close(model_source_camera(imported.config), openlrm, atol=1e-6, rtol=0)
    # What ImageTo3D feeds the model is OpenLRM's vector, not the +X one of VFusion3D.
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    planes = ImageTo3D(imported, InferenceConfig(device="cpu", dtype="fp32")).encode(images)
    with torch.no_grad():
        assert torch.equal(planes, imported.encode(images, openlrm.expand(2, 16)))
        assert not torch.allclose(planes, imported.encode(images, canonical_source_camera(2.0).expand(2, 16)))
    # A VFusion3D import keeps the +X camera, and a config.json without the field loads with azimuth 0.
    save_file({k: v.contiguous().clone() for k, v in export_state_dict(_seeded(_tiny()), "vfusion3d").items()}, tmp_path / "v.safetensors")
    vfusion3d = import_checkpoint(tmp_path / "v.safetensors", tmp_path / "v.vf3d", "vfusion3d", TINY_OVERRIDES)
    assert load_reconstructor(vfusion3d).config.source_camera_azimuth_deg == 0.0
    document = json.loads((vfusion3d / "config.json").read_text())
    del document["config"]["source_camera_azimuth_deg"]
    (vfusion3d / "config.json").write_text(json.dumps(document))
    assert load_reconstructor(vfusion3d).config.source_camera_azimuth_deg == 0.0


def test_openlrm_export_uses_original_dinov2_names():
    config = _tiny(encoder={"num_register_tokens": 4})
    model = _seeded(config)
    released = export_state_dict(model, "openlrm")
    q, k, v, _ = installed_dinov2_attention_names()
    layer = model.state_dict()
    qkv = released["encoder.model.blocks.1.attn.qkv.weight"]
    assert qkv.shape == (3 * 24, 24)
    assert torch.equal(qkv, torch.cat([layer[f"encoder.dinov2.encoder.layer.1.{x}.weight"] for x in (q, k, v)]))
    assert released["encoder.model.register_tokens"].shape == (1, 4, 24)
    assert released["encoder.model.pos_embed"].shape == (1, 1 + 10 * 10, 24)
    assert torch.equal(released["encoder.model.blocks.2.ls1.gamma"], layer["encoder.dinov2.encoder.layer.2.layer_scale1.lambda1"])
    assert released["pos_embed"].shape == (1, 3 * 4 * 4, 40)
    assert released["upsampler.weight"].shape == (40, 6, 3, 3)
    assert not any("mask_token" in name or name.startswith("encoder.model.embeddings") for name in released)


def test_fused_cross_attention_when_encoder_and_transformer_widths_match(tmp_path):
    # nn.MultiheadAttention fuses q/k/v into in_proj_weight when kdim == embed_dim (OpenLRM-base).
    config = _tiny(encoder={"hidden_size": 40, "num_heads": 5})
    model = _seeded(config)
    released = export_state_dict(model, "vfusion3d")
    assert released["transformer.layers.0.cross_attn.in_proj_weight"].shape == (120, 40)
    assert not any("q_proj_weight" in name for name in released)
    imported_config, state = convert_state_dict(released, "vfusion3d", {**TINY_OVERRIDES, "encoder": {"num_heads": 5, "image_size": 32}})
    assert imported_config == C.merge(config, RELEASE_ERA_ENCODER)
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_transformers_5_names_in_the_source_are_accepted():
    config = _tiny()
    model = _seeded(config)
    renames = dict(
        zip(
            ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"),
            ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
        )
    )
    released = {}
    for name, tensor in export_state_dict(model, "vfusion3d").items():
        for old, new in renames.items():
            name = name.replace(old, new)
        released[name] = tensor
    assert "encoder.model.encoder.layer.0.attention.q_proj.weight" in released
    imported_config, state = convert_state_dict(released, "vfusion3d", TINY_OVERRIDES)
    assert imported_config == C.merge(config, RELEASE_ERA_ENCODER)
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name


# ---------------------------------------------------------------------------------------------
# The released names mean the released network: functional re-implementations of the released
# forward passes, written against the released names only (so a mapping table that swaps two
# same-shaped tensors, which a round trip cannot see, fails here; docs/vfusion3d.md#released-checkpoint).
# ---------------------------------------------------------------------------------------------

ENCODER_NAMES = {
    # transformers-4.x Dinov2Model (VFusion3D) and original facebookresearch DINOv2 (OpenLRM).
    "vfusion3d": {
        "cls": "embeddings.cls_token",
        "pos": "embeddings.position_embeddings",
        "registers": "embeddings.register_tokens",
        "patch": "embeddings.patch_embeddings.projection",
        "block": "encoder.layer.{i}.",
        "norm1": "norm1",
        "norm2": "norm2",
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "qkv": None,
        "out": "attention.output.dense",
        "ls1": "layer_scale1.lambda1",
        "ls2": "layer_scale2.lambda1",
        "final": "layernorm",
    },
    "openlrm": {
        "cls": "cls_token",
        "pos": "pos_embed",
        "registers": "register_tokens",
        "patch": "patch_embed.proj",
        "block": "blocks.{i}.",
        "norm1": "norm1",
        "norm2": "norm2",
        "qkv": "attn.qkv",
        "out": "attn.proj",
        "ls1": "ls1.gamma",
        "ls2": "ls2.gamma",
        "final": "norm",
    },
}
TOP_LEVEL_NAMES = {
    "vfusion3d": {"queries": "transformer.pos_embed", "deconv": "transformer.deconv"},
    "openlrm": {"queries": "pos_embed", "deconv": "upsampler"},
}


def _reference_encoder(sd, format, images, heads, layers):
    """DINOv2 forward on released tensors: images [N, 3, S, S] (S = position grid) → tokens [N, T, D]."""
    names = ENCODER_NAMES[format]
    w = lambda name: sd[f"encoder.model.{name}"]  # noqa: E731
    layer_norm = lambda x, name: F.layer_norm(x, x.shape[-1:], w(f"{name}.weight"), w(f"{name}.bias"), eps=1e-6)  # noqa: E731
    linear = lambda x, name: F.linear(x, w(f"{name}.weight"), w(f"{name}.bias"))  # noqa: E731
    patch_weight = w(f"{names['patch']}.weight")
    x = F.conv2d(images, patch_weight, w(f"{names['patch']}.bias"), stride=patch_weight.shape[-1]).flatten(2).transpose(1, 2)
    batch, width = x.shape[0], x.shape[-1]
    x = torch.cat([w(names["cls"]).expand(batch, -1, -1), x], dim=1) + w(names["pos"])
    if f"encoder.model.{names['registers']}" in sd:
        x = torch.cat([x[:, :1], w(names["registers"]).expand(batch, -1, -1), x[:, 1:]], dim=1)
    for i in range(layers):
        block = names["block"].format(i=i)
        h = layer_norm(x, block + names["norm1"])
        if names["qkv"]:
            q, k, v = linear(h, block + names["qkv"]).chunk(3, dim=-1)
        else:
            q, k, v = (linear(h, block + names[part]) for part in "qkv")
        split = lambda t: t.reshape(batch, -1, heads, width // heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(batch, -1, width)
        x = x + w(block + names["ls1"]) * linear(attended, block + names["out"])
        x = x + w(block + names["ls2"]) * linear(
            F.gelu(linear(layer_norm(x, block + names["norm2"]), block + "mlp.fc1")), block + "mlp.fc2"
        )
    x = layer_norm(x, names["final"])
    # OpenLRM's encoder wrapper hands only CLS + patch tokens to the transformer.
    registers = sd[f"encoder.model.{names['registers']}"].shape[1] if f"encoder.model.{names['registers']}" in sd else 0
    return torch.cat([x[:, :1], x[:, 1 + registers :]], dim=1)


def _reference_planes(sd, format, tokens, cameras, heads, layers, token_resolution):
    """The released triplane transformer (torch's own MultiheadAttention code path): → planes [N, 3, C, H, W]."""
    top = TOP_LEVEL_NAMES[format]
    camera = F.linear(
        F.silu(F.linear(cameras, sd["camera_embedder.mlp.0.weight"], sd["camera_embedder.mlp.0.bias"])),
        sd["camera_embedder.mlp.2.weight"],
        sd["camera_embedder.mlp.2.bias"],
    )
    x = sd[top["queries"]].expand(tokens.shape[0], -1, -1)
    width = x.shape[-1]

    def modulated(x, prefix):
        shift, scale = F.linear(F.silu(camera), sd[f"{prefix}.mlp.1.weight"], sd[f"{prefix}.mlp.1.bias"]).chunk(2, dim=-1)
        return (
            F.layer_norm(x, (width,), sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"], eps=1e-6) * (1 + scale[:, None])
            + shift[:, None]
        )

    def attention(query, context, prefix):
        separate = f"{prefix}.q_proj_weight" in sd
        out, _ = F.multi_head_attention_forward(
            query.transpose(0, 1),
            context.transpose(0, 1),
            context.transpose(0, 1),
            width,
            heads,
            in_proj_weight=None if separate else sd[f"{prefix}.in_proj_weight"],
            in_proj_bias=None,
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=sd[f"{prefix}.out_proj.weight"],
            out_proj_bias=None,
            training=False,
            need_weights=False,
            use_separate_proj_weight=separate,
            q_proj_weight=sd.get(f"{prefix}.q_proj_weight"),
            k_proj_weight=sd.get(f"{prefix}.k_proj_weight"),
            v_proj_weight=sd.get(f"{prefix}.v_proj_weight"),
        )
        return out.transpose(0, 1)

    for i in range(layers):
        layer = f"transformer.layers.{i}"
        x = x + attention(modulated(x, f"{layer}.norm1"), tokens, f"{layer}.cross_attn")
        h = modulated(x, f"{layer}.norm2")
        x = x + attention(h, h, f"{layer}.self_attn")
        h = F.gelu(F.linear(modulated(x, f"{layer}.norm3"), sd[f"{layer}.mlp.0.weight"], sd[f"{layer}.mlp.0.bias"]))
        x = x + F.linear(h, sd[f"{layer}.mlp.3.weight"], sd[f"{layer}.mlp.3.bias"])
    x = F.layer_norm(x, (width,), sd["transformer.norm.weight"], sd["transformer.norm.bias"], eps=1e-6)
    batch, side = x.shape[0], token_resolution
    grids = x.reshape(batch, 3, side, side, width).permute(0, 1, 4, 2, 3).reshape(batch * 3, width, side, side)
    kernel = sd[f"{top['deconv']}.weight"]
    planes = F.conv_transpose2d(grids, kernel, sd[f"{top['deconv']}.bias"], stride=kernel.shape[-1])
    return planes.reshape(batch, 3, *planes.shape[1:])


def _reference_decoder(sd, features):
    """The released MLP: features [..., 3C] → density [..., 1], rgb [..., 3]."""
    layers = sorted({int(key.split(".")[3]) for key in sd if key.startswith("synthesizer.decoder.net.")})
    x = features
    for index in layers:
        x = F.linear(x, sd[f"synthesizer.decoder.net.{index}.weight"], sd[f"synthesizer.decoder.net.{index}.bias"])
        if index != layers[-1]:
            x = torch.relu(x)
    return F.softplus(x[..., :1] - 1), torch.sigmoid(x[..., 1:]) * 1.002 - 0.001


@pytest.mark.parametrize(
    ("format", "changes"),
    [
        ("vfusion3d", {}),
        ("openlrm", {"encoder": {"num_register_tokens": 4, "normalize_input": False}}),
        ("vfusion3d", {"encoder": {"hidden_size": 40, "num_heads": 5}}),  # fused cross-attention
    ],
)
def test_exported_names_run_the_released_network(format, changes):
    # Inputs at the position-embedding size, where DINOv2 does not interpolate positions.
    config = _tiny(**{**changes, "encoder": {"image_size": 40, **changes.get("encoder", {})}})
    model = _seeded(config)
    sd = export_state_dict(model, format)
    images, source, _ = _inputs(config)
    pixels = (
        images
        if format == "openlrm"
        else (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    )
    with torch.no_grad():
        tokens = _reference_encoder(sd, format, pixels, config.encoder.num_heads, config.encoder.num_layers)
        torch.testing.assert_close(model.encoder(images), tokens, atol=1e-5, rtol=1e-4)
        planes = _reference_planes(
            sd, format, tokens, source, config.transformer.num_heads, config.transformer.num_layers, config.triplane.token_resolution
        )
        torch.testing.assert_close(model.encode(images, source), planes, atol=1e-5, rtol=1e-4)
        features = torch.randn(2, 50, 3 * config.triplane.channels)
        raw_density, rgb = model.decoder(features)
        for ours, theirs in zip((activate_density(raw_density), rgb), _reference_decoder(sd, features)):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The released VFusion3D layout, without allocating a single weight (docs/vfusion3d.md#released-checkpoint)
# ---------------------------------------------------------------------------------------------

RELEASED_SHAPES = {
    "camera_embedder.mlp.0.weight": [1024, 16],
    "camera_embedder.mlp.0.bias": [1024],
    "camera_embedder.mlp.2.weight": [1024, 1024],
    "camera_embedder.mlp.2.bias": [1024],
    "transformer.pos_embed": [1, 3072, 1024],
    "transformer.norm.weight": [1024],
    "transformer.norm.bias": [1024],
    "transformer.deconv.weight": [1024, 80, 2, 2],
    "transformer.deconv.bias": [80],
    "synthesizer.decoder.net.0.weight": [64, 240],
    "synthesizer.decoder.net.0.bias": [64],
    "synthesizer.decoder.net.2.weight": [64, 64],
    "synthesizer.decoder.net.2.bias": [64],
    "synthesizer.decoder.net.4.weight": [64, 64],
    "synthesizer.decoder.net.4.bias": [64],
    "synthesizer.decoder.net.6.weight": [4, 64],
    "synthesizer.decoder.net.6.bias": [4],
    "encoder.model.embeddings.position_embeddings": [1, 1370, 768],
    "encoder.model.embeddings.cls_token": [1, 1, 768],
    "encoder.model.embeddings.patch_embeddings.projection.weight": [768, 3, 14, 14],
    "encoder.model.encoder.layer.0.attention.attention.query.weight": [768, 768],
    "encoder.model.encoder.layer.11.attention.attention.value.bias": [768],
    "encoder.model.encoder.layer.11.attention.output.dense.weight": [768, 768],
    "encoder.model.encoder.layer.5.layer_scale2.lambda1": [768],
    "encoder.model.encoder.layer.7.mlp.fc1.weight": [3072, 768],
    "encoder.model.layernorm.bias": [768],
}
PER_LAYER_SHAPES = {
    **{f"norm{j}.norm.{p}": [1024] for j in (1, 2, 3) for p in ("weight", "bias")},
    **{f"norm{j}.mlp.1.weight": [2048, 1024] for j in (1, 2, 3)},
    **{f"norm{j}.mlp.1.bias": [2048] for j in (1, 2, 3)},
    "cross_attn.q_proj_weight": [1024, 1024],
    "cross_attn.k_proj_weight": [1024, 768],
    "cross_attn.v_proj_weight": [1024, 768],
    "cross_attn.out_proj.weight": [1024, 1024],
    "self_attn.in_proj_weight": [3072, 1024],
    "self_attn.out_proj.weight": [1024, 1024],
    "mlp.0.weight": [4096, 1024],
    "mlp.0.bias": [4096],
    "mlp.3.weight": [1024, 4096],
    "mlp.3.bias": [1024],
}


def test_vfusion3d_preset_matches_the_released_layout():
    config = C.preset(RECONSTRUCTOR_PRESETS, "vfusion3d")
    with torch.device("meta"):
        model = Reconstructor(config)
    assert sum(p.numel() for p in model.parameters()) == 452_135_700
    released = export_state_dict(model, "vfusion3d")
    assert all(tensor.is_meta for tensor in released.values())
    assert len(released) == 592
    assert sum(name.startswith("encoder.") for name in released) == 223
    assert sum(not name.startswith("encoder.") for name in released) == 369
    table = dict(RELEASED_SHAPES)
    table.update({f"transformer.layers.{i}.{name}": shape for i in range(16) for name, shape in PER_LAYER_SHAPES.items()})
    for name, shape in table.items():
        assert list(released[name].shape) == shape, name
    assert not any("transformer.layers.16." in name or "layer.12." in name for name in released)
    # And the importer infers exactly the preset back from those shapes.
    imported_config, state = convert_state_dict(released, "vfusion3d")
    assert imported_config == config
    assert all(tensor.is_meta for tensor in state.values())


def test_vfusion3d_import_refuses_a_file_that_is_not_the_released_architecture():
    config = C.preset(RECONSTRUCTOR_PRESETS, "vfusion3d")
    with torch.device("meta"):
        released = export_state_dict(Reconstructor(config), "vfusion3d")
    truncated = {name: tensor for name, tensor in released.items() if not name.startswith("transformer.layers.15.")}
    with pytest.raises(
        CheckpointFormatError, match=r"not the released vfusion3d architecture: transformer.num_layers = 15 \(released: 16\).*--config"
    ):
        convert_state_dict(truncated, "vfusion3d")
    # Said on purpose, the same file imports as a 15-layer model.
    imported, _ = convert_state_dict(truncated, "vfusion3d", {"transformer": {"num_layers": 15}})
    assert imported.transformer.num_layers == 15 and imported.encoder.position_interpolation == "scale_factor"


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def released_tiny():
    return {name: tensor.contiguous().clone() for name, tensor in export_state_dict(_seeded(_tiny()), "vfusion3d").items()}


def test_unknown_source_tensor_is_refused(tmp_path, released_tiny):
    source = {**released_tiny, "transformer.layers.0.extra_gate": torch.zeros(3), "ema.decay": torch.zeros(())}
    save_file(source, tmp_path / "extra.safetensors")
    with pytest.raises(
        CheckpointFormatError, match="2 tensors .* not part of a vfusion3d checkpoint: ema.decay, transformer.layers.0.extra_gate"
    ):
        import_checkpoint(tmp_path / "extra.safetensors", tmp_path / "out", "vfusion3d", TINY_OVERRIDES)
    assert not (tmp_path / "out").exists()


def test_missing_source_tensor_is_refused(released_tiny):
    source = dict(released_tiny)
    del source["transformer.layers.1.cross_attn.v_proj_weight"]
    with pytest.raises(CheckpointFormatError, match="missing 1 tensors: transformer.layers.1.cross_attn.v_proj_weight"):
        convert_state_dict(source, "vfusion3d", TINY_OVERRIDES)
    source = dict(released_tiny)
    del source["transformer.pos_embed"]
    with pytest.raises(CheckpointFormatError, match="no transformer.pos_embed"):
        convert_state_dict(source, "vfusion3d", TINY_OVERRIDES)


def test_shape_mismatch_is_refused_with_both_shapes(released_tiny):
    source = {**released_tiny, "transformer.layers.2.cross_attn.out_proj.weight": torch.zeros(40, 41)}
    with pytest.raises(
        CheckpointFormatError,
        match=r"transformer.layers.2.cross_attn.out_proj.weight is \[40, 41\] but the inferred model needs \[40, 40\]",
    ):
        convert_state_dict(source, "vfusion3d", TINY_OVERRIDES)


def test_wrong_format_and_bad_overrides_are_explained(released_tiny):
    openlrm = export_state_dict(_seeded(_tiny(encoder={"num_register_tokens": 4})), "openlrm")
    with pytest.raises(CheckpointFormatError, match="pos_embed.*format='openlrm'"):
        convert_state_dict(openlrm, "vfusion3d", TINY_OVERRIDES)
    with pytest.raises(CheckpointFormatError, match="transformer.width must be divisible by transformer.num_heads.*overrides"):
        convert_state_dict(released_tiny, "vfusion3d", {**TINY_OVERRIDES, "transformer": {"num_heads": 16}})
    with pytest.raises(C.ConfigError, match="num_head"):
        convert_state_dict(released_tiny, "vfusion3d", {"transformer": {"num_head": 5}})
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint format 'lrm'"):
        convert_state_dict(released_tiny, "lrm")


def test_export_checkpoint_writes_the_released_layout(tmp_path):
    model = _seeded(_tiny())
    path = export_checkpoint(model, tmp_path / "release.safetensors")
    written = load_file(path)
    expected = export_state_dict(model)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    with pytest.raises(CheckpointFormatError, match="safetensors"):
        export_checkpoint(model, tmp_path / "release.pth")
    with torch.device("meta"):
        ghost = Reconstructor(_tiny())
    with pytest.raises(CheckpointFormatError, match="meta"):
        export_checkpoint(ghost, tmp_path / "ghost.safetensors")

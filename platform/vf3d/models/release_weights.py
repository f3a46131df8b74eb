"""Model directories, and importers/exporters for the released VFusion3D and OpenLRM weights
(docs/vfusion3d.md#released-checkpoint, docs/internals.md#model-directories).

Model directory (our format, written by `PretrainedModel.save_pretrained`):

    DIR/config.json        {"model_type": "vf3d-reconstructor", "format_version": 1, ...metadata,
                            "config": <ReconstructorConfig as a nested dict>}
    DIR/model.safetensors  every persistent tensor of `Reconstructor(config)`, under our names

`load_reconstructor` / `save_reconstructor` are thin aliases of `from_pretrained` /
`save_pretrained`. Loading never unpickles anything.

Importers (`import_checkpoint`) turn a released state dict into such a directory:

- "vfusion3d": the facebookresearch/vfusion3d release: `encoder.model.*` in
  transformers `Dinov2Model` names (transformers 4.x attention names as in the released file, or
  5.x names), `camera_embedder.mlp.{0,2}`, `transformer.{pos_embed, layers.N.*, norm, deconv}`,
  `synthesizer.decoder.net.{0,2,4,...}`.
- "openlrm": OpenLRM v1.1 (`ModelLRM`): the encoder in the original facebookresearch DINOv2 names
  (`encoder.model.{cls_token, pos_embed, register_tokens, patch_embed.proj, blocks.N.attn.qkv, ...}`)
  and `pos_embed` / `upsampler` at the top level. Everything else is named as in VFusion3D (checked
  against OpenLRM's `ConditionModulationBlock`, `ModLN`, `CameraEmbedder` and `OSGDecoder`).
  OpenLRM's hacked DINOv2 deletes the unused `mask_token`, so the importer zero-fills it (the
  mask token only acts on masked-patch inputs, which vf3d never passes) and the exporter omits it.

Every architecture size is inferred from tensor shapes; what shapes cannot tell (head counts,
input size and normalisation, source-camera distance and azimuth, mesh iso level, renderer settings) comes
from the release's values for the format and can be overridden with a nested `overrides` dict.
The import is strict: every source tensor must be consumed, every model tensor provided, every
shape equal, otherwise a `CheckpointFormatError` names the offending keys.

Name mappings are data: `_Rule` tables of templates with `<placeholders>`, used in both
directions, so `export_state_dict` (our model → released layout) is the exact inverse of the
importer. Nothing here imports ray or deepspeed.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import atomic_path
from vf3d.models.pretrained import WEIGHTS_NAME, make_readable
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS, ReconstructorConfig

FORMATS = ("vfusion3d", "openlrm")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
"""Keys under which training scripts nest the state dict (the VFusion3D .pth uses the first)."""
MAX_LISTED = 10


class CheckpointFormatError(ValueError):
    """A checkpoint file is unreadable, unsafe, or not the layout its format promises."""


# ---------------------------------------------------------------------------------------------
# Our model directories
# ---------------------------------------------------------------------------------------------


def load_reconstructor(directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Reconstructor:
    """Load a model directory (config.json + model.safetensors) → `Reconstructor` in eval mode."""
    return Reconstructor.from_pretrained(directory, device=device, dtype=dtype)


def save_reconstructor(model: Reconstructor, directory: str | os.PathLike) -> Path:
    """Write `model` as a model directory (atomically); returns the directory."""
    return model.save_pretrained(directory)


# ---------------------------------------------------------------------------------------------
# Reading weight files safely
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} state dict on the CPU without unpickling arbitrary objects.

    Args:
        path: a `.safetensors` file; a `.pt/.pth/.bin/.ckpt` torch.save file (read with
            `weights_only=True`; a dict nested under `model_state_dict`, `state_dict` or `model` is
            unwrapped); or a model directory holding `model.safetensors`. A local path or an
            object-store URI (`s3://`, `gs://`), which is downloaded to a temporary file (removed
            afterwards) and read exactly as a local one.
    Returns:
        {name: tensor of any shape}, in file order.
    """
    path = storage.local_or_uri(path)
    if storage.is_dir(path):
        if not storage.is_file(storage.join(path, WEIGHTS_NAME)):
            raise CheckpointFormatError(f"{path} is a directory without {WEIGHTS_NAME}")
        path = storage.join(path, WEIGHTS_NAME)
    if not storage.is_file(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    name = storage.name(path)
    suffix = Path(name).suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:  # before downloading anything
        raise CheckpointFormatError(
            f"unsupported checkpoint type {suffix or name!r}: expected .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
        )
    with storage.local_copy(path) as local:  # the file itself when local
        return _read_weights_file(local, suffix, shown=path)


def _read_weights_file(path: Path, suffix: str, shown: Path | str) -> dict[str, torch.Tensor]:
    """The state dict in the local file `path` (a .safetensors or a torch.save file, by `suffix`);
    errors name `shown` (the URI of a downloaded file)."""
    if suffix == ".safetensors":
        try:
            return _check_flat(load_file(str(path), device="cpu"), shown)
        except SafetensorError as error:
            raise CheckpointFormatError(f"{shown} is not a readable safetensors file: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next(
            (line.strip() for line in str(error).splitlines() if "WeightsUnpickler error" in line or "Unsupported global" in line), ""
        )
        raise CheckpointFormatError(
            f"{shown} cannot be loaded with torch.load(weights_only=True): it holds objects other than tensors "
            f"(loading it would need unsafe unpickling, which vf3d never does) or it is corrupt. "
            f"Re-save just the state dict (torch.save(state_dict) or safetensors). {detail}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointFormatError(f"{shown} is not a readable torch checkpoint: {error}") from None
    return _check_flat(_unwrap(loaded), shown)


def _unwrap(loaded: Any) -> Any:
    if isinstance(loaded, dict):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), dict):
                return loaded[key]
    return loaded


def _check_flat(state: Any, path: Path | str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path} holds a {type(state).__name__}, not a state dict")
    bad = [repr(key) for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointFormatError(f"{path}: {len(bad)} entries are not named tensors: {', '.join(bad[:MAX_LISTED])}")
    if not state:
        raise CheckpointFormatError(f"{path} holds no tensors")
    return dict(state)


# ---------------------------------------------------------------------------------------------
# Name mapping tables
# ---------------------------------------------------------------------------------------------

PLACEHOLDERS = {"n": r"\d+", "wb": r"weight|bias", "fc": r"fc1|fc2", "rest": r".+"}
"""What each `<placeholder>` of a rule template matches."""


@functools.cache
def _compile(template: str) -> re.Pattern:
    parts = re.split(r"<(\w+)>", template)
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{PLACEHOLDERS[part]})" for i, part in enumerate(parts))
    return re.compile(pattern)


def _fill(template: str, groups: dict[str, str]) -> str:
    return re.sub(r"<(\w+)>", lambda match: groups[match.group(1)], template)


@dataclass(frozen=True)
class _Rule:
    """One released name ↔ one of our names, or ↔ several (a fused tensor split along dim 0)."""

    released: str
    ours: tuple[str, ...]
    index_step: int = 1
    """Released `<n>` = our `<n>` × step (nn.Sequential counts its parameter-free activations)."""
    cross_attention: str | None = None
    """"fused"/"separate": nn.MultiheadAttention fuses q/k/v only when kdim == embed_dim, so the
    exporter uses one or the other; None: always applies."""

    def from_released(self, key: str) -> tuple[str, ...] | None:
        match = _compile(self.released).fullmatch(key)
        if match is None:
            return None
        groups = match.groupdict()
        if "n" in groups:
            index = int(groups["n"])
            if index % self.index_step:
                return None
            groups["n"] = str(index // self.index_step)
        return tuple(_fill(template, groups) for template in self.ours)

    def from_ours(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        """Our key (the first of a fused group) → (released name, all our names it gathers)."""
        match = _compile(self.ours[0]).fullmatch(key)
        if match is None:
            return None
        groups = match.groupdict()
        ours = tuple(_fill(template, groups) for template in self.ours)
        if "n" in groups:
            groups["n"] = str(int(groups["n"]) * self.index_step)
        return _fill(self.released, groups), ours


def _rule(released: str, *ours: str, **options: Any) -> _Rule:
    return _Rule(released, ours, **options)


_BLOCK = "transformer.blocks.<n>"
_LAYER = "transformer.layers.<n>"
TRIPLANE_RULES = (
    _rule("camera_embedder.mlp.0.<wb>", "camera_embedder.linear_in.<wb>"),
    _rule("camera_embedder.mlp.2.<wb>", "camera_embedder.linear_out.<wb>"),
    _rule(f"{_LAYER}.norm1.norm.<wb>", f"{_BLOCK}.norm_cross.norm.<wb>"),
    _rule(f"{_LAYER}.norm1.mlp.1.<wb>", f"{_BLOCK}.norm_cross.modulation.<wb>"),
    _rule(f"{_LAYER}.norm2.norm.<wb>", f"{_BLOCK}.norm_self.norm.<wb>"),
    _rule(f"{_LAYER}.norm2.mlp.1.<wb>", f"{_BLOCK}.norm_self.modulation.<wb>"),
    _rule(f"{_LAYER}.norm3.norm.<wb>", f"{_BLOCK}.norm_mlp.norm.<wb>"),
    _rule(f"{_LAYER}.norm3.mlp.1.<wb>", f"{_BLOCK}.norm_mlp.modulation.<wb>"),
    _rule(f"{_LAYER}.cross_attn.q_proj_weight", f"{_BLOCK}.cross_attn.to_q.weight", cross_attention="separate"),
    _rule(f"{_LAYER}.cross_attn.k_proj_weight", f"{_BLOCK}.cross_attn.to_k.weight", cross_attention="separate"),
    _rule(f"{_LAYER}.cross_attn.v_proj_weight", f"{_BLOCK}.cross_attn.to_v.weight", cross_attention="separate"),
    _rule(f"{_LAYER}.cross_attn.in_proj_weight", *(f"{_BLOCK}.cross_attn.to_{x}.weight" for x in "qkv"), cross_attention="fused"),
    _rule(f"{_LAYER}.cross_attn.out_proj.weight", f"{_BLOCK}.cross_attn.to_out.weight"),
    _rule(f"{_LAYER}.self_attn.in_proj_weight", f"{_BLOCK}.self_attn.to_qkv.weight"),
    _rule(f"{_LAYER}.self_attn.out_proj.weight", f"{_BLOCK}.self_attn.to_out.weight"),
    _rule(f"{_LAYER}.mlp.0.<wb>", f"{_BLOCK}.mlp.0.<wb>"),
    _rule(f"{_LAYER}.mlp.3.<wb>", f"{_BLOCK}.mlp.2.<wb>"),
    _rule("transformer.norm.<wb>", "transformer.final_norm.<wb>"),
    _rule("synthesizer.decoder.net.<n>.<wb>", "decoder.layers.<n>.<wb>", index_step=2),
)
"""Shared by both formats: camera embedder, transformer blocks, decoder MLP."""

HF_DINOV2_ATTENTION = {
    "transformers-4": ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"),
    "transformers-5": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
}
"""(q, k, v, out) module names inside `encoder.layer.N` of transformers' DINOv2, by version.
The released VFusion3D file has the 4.x names; our encoder has whatever is installed
(docs/vfusion3d.md#import-mapping)."""


@functools.cache
def installed_dinov2_attention_names() -> tuple[str, str, str, str]:
    """The (q, k, v, out) names the installed transformers gives DINOv2 attention modules."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        keys = set(
            Dinov2Model(Dinov2Config(hidden_size=4, num_hidden_layers=1, num_attention_heads=1, image_size=4, patch_size=2)).state_dict()
        )
    for names in HF_DINOV2_ATTENTION.values():
        if all(f"encoder.layer.0.{name}.weight" in keys for name in names):
            return names
    raise RuntimeError(f"unknown DINOv2 attention layout in the installed transformers: {sorted(k for k in keys if 'attention' in k)}")


def _encoder_rules(format: str) -> tuple[_Rule, ...]:
    q, k, v, o = installed_dinov2_attention_names()
    layer = "encoder.dinov2.encoder.layer.<n>"
    if format == "vfusion3d":
        # 4.x names first: the exporter uses the first rule that matches, as the release has them.
        attention = tuple(
            _rule(f"encoder.model.encoder.layer.<n>.{theirs}.<wb>", f"{layer}.{ours}.<wb>")
            for names in HF_DINOV2_ATTENTION.values()
            for theirs, ours in zip(names, (q, k, v, o))
        )
        return (
            *attention,
            _rule("encoder.model.<rest>", "encoder.dinov2.<rest>"),
            _rule("transformer.pos_embed", "transformer.triplane_queries"),
            _rule("transformer.deconv.<wb>", "upsampler.deconv.<wb>"),
        )
    block = "encoder.model.blocks.<n>"
    return (
        _rule("encoder.model.cls_token", "encoder.dinov2.embeddings.cls_token"),
        _rule("encoder.model.mask_token", "encoder.dinov2.embeddings.mask_token"),
        _rule("encoder.model.pos_embed", "encoder.dinov2.embeddings.position_embeddings"),
        _rule("encoder.model.register_tokens", "encoder.dinov2.embeddings.register_tokens"),
        _rule("encoder.model.patch_embed.proj.<wb>", "encoder.dinov2.embeddings.patch_embeddings.projection.<wb>"),
        _rule(f"{block}.norm1.<wb>", f"{layer}.norm1.<wb>"),
        _rule(f"{block}.attn.qkv.<wb>", f"{layer}.{q}.<wb>", f"{layer}.{k}.<wb>", f"{layer}.{v}.<wb>"),
        _rule(f"{block}.attn.proj.<wb>", f"{layer}.{o}.<wb>"),
        _rule(f"{block}.ls1.gamma", f"{layer}.layer_scale1.lambda1"),
        _rule(f"{block}.norm2.<wb>", f"{layer}.norm2.<wb>"),
        _rule(f"{block}.mlp.<fc>.<wb>", f"{layer}.mlp.<fc>.<wb>"),
        _rule(f"{block}.ls2.gamma", f"{layer}.layer_scale2.lambda1"),
        _rule("encoder.model.norm.<wb>", "encoder.dinov2.layernorm.<wb>"),
        _rule("pos_embed", "transformer.triplane_queries"),
        _rule("upsampler.<wb>", "upsampler.deconv.<wb>"),
    )


def _rules(format: str) -> tuple[_Rule, ...]:
    if format not in FORMATS:
        raise CheckpointFormatError(f"unknown checkpoint format {format!r}; choose one of: {', '.join(FORMATS)}")
    return _encoder_rules(format) + TRIPLANE_RULES


ABSENT_IN_RELEASE = {
    "vfusion3d": frozenset(),
    "openlrm": frozenset({"encoder.dinov2.embeddings.mask_token"}),
}
"""Our tensors a released file may lack: imported as zeros, not exported."""

RELEASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vfusion3d": {
        "encoder": {"num_heads": 12, "image_size": 512, "normalize_input": True, "position_interpolation": "scale_factor"},
        "transformer": {"num_heads": 16},
        "renderer": {"num_coarse_samples": 64, "num_fine_samples": 64, "render_size": 384},
        "source_camera_distance": 1.0,
        "mesh_iso": 1.0,
    },
    "openlrm": {
        "encoder": {"num_heads": 12, "image_size": 448, "normalize_input": False},
        "transformer": {"num_heads": 16},
        "renderer": {"num_coarse_samples": 64, "num_fine_samples": 64, "render_size": 384},
        "source_camera_distance": 2.0,
        "source_camera_azimuth_deg": -90.0,
        "mesh_iso": 3.0,
    },
}
"""Settings tensor shapes cannot reveal, as in each release; `overrides` win (docs/vfusion3d.md#import-mapping,
docs/vfusion3d.md#openlrm)."""


# ---------------------------------------------------------------------------------------------
# Export: our model → released layout
# ---------------------------------------------------------------------------------------------


def export_state_dict(model: Reconstructor, format: str = "vfusion3d") -> dict[str, torch.Tensor]:
    """Our model's weights under the released names of `format` (the importer's exact inverse).

    VFusion3D names use transformers-4.x DINOv2 attention names, as in the released file; OpenLRM
    output has no DINOv2 mask token, as in its release. Works on a model built on the meta device
    (returns meta tensors; nothing is allocated).

    Returns:
        {released name: tensor}; fused tensors (OpenLRM's DINOv2 `attn.qkv` [3·D, D], and
        `cross_attn.in_proj_weight` [3·W, W] when encoder width == transformer width) are
        concatenated along dim 0 in q; k; v order.
    """
    state = model.state_dict()
    fused = model.config.encoder.hidden_size == model.config.transformer.width
    rules = [rule for rule in _rules(format) if rule.cross_attention in (None, "fused" if fused else "separate")]
    plan: dict[str, tuple[str, ...]] = {}
    for key in state:
        if key in ABSENT_IN_RELEASE[format]:
            continue
        for rule in rules:
            found = rule.from_ours(key)
            if found is not None:
                plan[found[0]] = found[1]
                break
    unexported = sorted(set(state) - {name for names in plan.values() for name in names} - ABSENT_IN_RELEASE[format])
    if unexported:
        raise CheckpointFormatError(f"no {format} name for {len(unexported)} tensors: {', '.join(unexported[:MAX_LISTED])}")
    return {
        released: state[names[0]] if len(names) == 1 else torch.cat([state[name] for name in names]) for released, names in plan.items()
    }


def export_checkpoint(model: Reconstructor, path: str | os.PathLike, format: str = "vfusion3d") -> Path:
    """Write `export_state_dict(model, format)` to a `.safetensors` file (atomically); returns it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointFormatError(f"export writes safetensors: name the file *.safetensors, got {path.name}")
    state = export_state_dict(model, format)
    if any(tensor.is_meta for tensor in state.values()):
        raise CheckpointFormatError("the model has no weights (it lives on the meta device)")
    # safetensors refuses views sharing storage (the split q/k/v of an import): write copies.
    state = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file(state, str(partial), metadata={"format": format, "exported_by": "vf3d"})
        make_readable(partial)
    return path


# ---------------------------------------------------------------------------------------------
# Import: released layout → our model directory
# ---------------------------------------------------------------------------------------------


def convert_state_dict(
    source: dict[str, torch.Tensor], format: str = "vfusion3d", overrides: dict[str, Any] | None = None
) -> tuple[ReconstructorConfig, dict[str, torch.Tensor]]:
    """Map a released state dict onto our model, inferring the config from tensor shapes.

    Args:
        source: {released name: tensor} (e.g. from `read_state_dict`); meta tensors work too.
        format: "vfusion3d" or "openlrm".
        overrides: nested dict applied last (e.g. {"transformer": {"num_heads": 8}}).
    Returns:
        (config, state): `state` has exactly the keys and shapes of `Reconstructor(config)`'s
        state dict, floating tensors as float32.
    Raises:
        CheckpointFormatError: unconsumed source tensors, missing tensors or shape mismatches.
    """
    state, origin = _map_released(source, format)
    config = _build_config(state, format, overrides or {})
    with torch.device("meta"):
        expected = {name: tensor.shape for name, tensor in Reconstructor(config).state_dict().items()}
    for name in ABSENT_IN_RELEASE[format] - set(state):
        if name in expected:
            state[name] = torch.zeros(expected[name], device=next(iter(state.values())).device)
    _check_against(state, origin, expected, format)
    return config, {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def import_checkpoint(
    src: str | os.PathLike, out_dir: str | os.PathLike, format: str = "vfusion3d", overrides: dict[str, Any] | None = None
) -> Path | str:
    """Convert a released checkpoint file into a vf3d model directory.

    Args:
        src: released weights (.safetensors, torch.save file, or a directory with model.safetensors);
            a local path or an object-store URI (`read_state_dict`).
        out_dir: model directory to write (config.json + model.safetensors); a path or a URI.
        format: "vfusion3d" or "openlrm".
        overrides: nested config overrides for what shapes cannot tell (head counts, image size...).
    Returns:
        out_dir. Its config.json records the source format and file under "imported_from".
    """
    source = read_state_dict(src)
    config, state = convert_state_dict(source, format, overrides)
    with torch.device("meta"):
        model = Reconstructor(config)
    model.load_state_dict(state, strict=True, assign=True)
    file = str(src) if storage.is_uri(src) else str(Path(src).resolve())
    metadata = {"imported_from": {"format": format, "file": file, "num_tensors": len(source)}}
    return model.save_pretrained(out_dir, metadata=metadata)


def _map_released(source: dict[str, torch.Tensor], format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename (and split) released tensors → ({our name: tensor}, {our name: where it came from})."""
    rules = _rules(format)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    leftovers = []
    for key, tensor in source.items():
        names = next((found for rule in rules if (found := rule.from_released(key)) is not None), None)
        if names is None:
            leftovers.append(key)
            continue
        if len(names) > 1 and (tensor.ndim == 0 or tensor.shape[0] % len(names)):
            raise CheckpointFormatError(f"{key} has shape {list(tensor.shape)}: cannot split it into {len(names)} equal parts along dim 0")
        for index, (name, part) in enumerate(zip(names, tensor.chunk(len(names)) if len(names) > 1 else (tensor,))):
            if name in state:
                raise CheckpointFormatError(f"{origin[name]} and {key} both map to {name}")
            state[name] = part
            origin[name] = key if len(names) == 1 else f"{key} (part {index + 1} of {len(names)})"
    if leftovers:
        others = [other for other in FORMATS if other != format and _consumes_all(source, other)]
        hint = f" It looks like a {others[0]} checkpoint: pass format={others[0]!r}." if others else ""
        raise CheckpointFormatError(
            f"{len(leftovers)} tensors of the source are not part of a {format} checkpoint: {', '.join(sorted(leftovers)[:MAX_LISTED])}"
            + (" ..." if len(leftovers) > MAX_LISTED else "")
            + "."
            + hint
        )
    return state, origin


def _consumes_all(source: dict[str, torch.Tensor], format: str) -> bool:
    rules = _rules(format)
    return all(any(rule.from_released(key) is not None for rule in rules) for key in source)


def _check_against(state: dict[str, torch.Tensor], origin: dict[str, str], expected: dict[str, torch.Size], format: str) -> None:
    problems = []
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"missing {len(missing)} tensors: {', '.join(_released_name(name, format) for name in missing[:MAX_LISTED])}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {', '.join(origin[name] for name in unexpected[:MAX_LISTED])}")
    mismatched = [name for name in expected if name in state and state[name].shape != expected[name]]
    if mismatched:
        problems.append(
            "shape mismatches: "
            + "; ".join(
                f"{origin[name]} is {list(state[name].shape)} but the inferred model needs {list(expected[name])}"
                for name in mismatched[:MAX_LISTED]
            )
        )
    if problems:
        raise CheckpointFormatError(f"not a loadable {format} checkpoint: " + "; ".join(problems))


def _released_name(name: str, format: str) -> str:
    """The released name holding our tensor `name` (for error messages)."""
    for rule in _rules(format):
        for position, template in enumerate(rule.ours):
            match = _compile(template).fullmatch(name)
            if match is not None:
                groups = match.groupdict()
                if "n" in groups:
                    groups["n"] = str(int(groups["n"]) * rule.index_step)
                part = f" (part {position + 1} of {len(rule.ours)})" if len(rule.ours) > 1 else ""
                return _fill(rule.released, groups) + part
    return name


# ---------------------------------------------------------------------------------------------
# Config inference from shapes (our names)
# ---------------------------------------------------------------------------------------------


def _shape(state: dict[str, torch.Tensor], name: str, format: str) -> torch.Size:
    if name not in state:
        raise CheckpointFormatError(f"the source has no {_released_name(name, format)}: is it a {format} checkpoint?")
    return state[name].shape


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of modules `prefix.<i>.*` (max index + 1; gaps surface later as missing tensors)."""
    indices = [int(match.group(1)) for name in state if (match := re.match(re.escape(prefix) + r"\.(\d+)\.", name))]
    return max(indices) + 1 if indices else 0


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise CheckpointFormatError(f"{what}: {count} is not a square number of tokens")
    return side


def _exact_ratio(hidden: int, width: int, what: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CheckpointFormatError(f"{what}: an MLP of width {hidden} on {width} channels is not expressible as width × mlp_ratio")
    return ratio


def infer_sizes(state: dict[str, torch.Tensor], format: str = "vfusion3d") -> dict[str, Any]:
    """Architecture sizes read off a state dict in OUR names → nested config overrides.

    Shapes used: cls_token [1,1,D]; patch projection [D,3,p,p]; position embeddings [1,1+g²,D]
    (position_image_size = g·p); register_tokens [1,r,D]; fc1 [m·D, D]; triplane queries
    [1,3·R²,W]; MLP first layer [h,W]; camera linear_in [E,16]; deconv [W,C,f,f]; decoder
    layers.0 [H, 3·C]; layer counts from the largest index.
    """
    hidden = _shape(state, "encoder.dinov2.embeddings.cls_token", format)[-1]
    patch = _shape(state, "encoder.dinov2.embeddings.patch_embeddings.projection.weight", format)[-1]
    positions = _shape(state, "encoder.dinov2.embeddings.position_embeddings", format)[1] - 1
    encoder_mlp = _shape(state, "encoder.dinov2.encoder.layer.0.mlp.fc1.weight", format)[0]
    if encoder_mlp % hidden:
        raise CheckpointFormatError(f"encoder MLP width {encoder_mlp} is not an integer multiple of its hidden size {hidden}")
    queries = _shape(state, "transformer.triplane_queries", format)
    width = queries[-1]
    if queries[1] % 3:
        raise CheckpointFormatError(f"triplane queries: {queries[1]} tokens is not 3 planes of tokens")
    deconv = _shape(state, "upsampler.deconv.weight", format)
    if deconv[2] != deconv[3]:
        raise CheckpointFormatError(f"upsampler kernel {list(deconv[2:])} is not square")
    registers = state.get("encoder.dinov2.embeddings.register_tokens")
    return {
        "encoder": {
            "hidden_size": hidden,
            "num_layers": _count(state, "encoder.dinov2.encoder.layer"),
            "mlp_ratio": encoder_mlp // hidden,
            "patch_size": patch,
            "position_image_size": _square_side(positions, "encoder position embeddings") * patch,
            "num_register_tokens": 0 if registers is None else registers.shape[1],
        },
        "transformer": {
            "width": width,
            "num_layers": _count(state, "transformer.blocks"),
            "mlp_ratio": _exact_ratio(_shape(state, "transformer.blocks.0.mlp.0.weight", format)[0], width, "transformer MLP"),
            "camera_embed_dim": _shape(state, "camera_embedder.linear_in.weight", format)[0],
        },
        # The upsampler is a ConvTranspose2d with stride == kernel size (as in both releases).
        "triplane": {
            "token_resolution": _square_side(queries[1] // 3, "triplane queries per plane"),
            "upsample_factor": deconv[2],
            "channels": deconv[1],
        },
        "decoder": {"hidden_width": _shape(state, "decoder.layers.0.weight", format)[0], "num_layers": _count(state, "decoder.layers")},
    }


KNOWN_ARCHITECTURES = {"vfusion3d": lambda: RECONSTRUCTOR_PRESETS["vfusion3d"]()}
"""Formats released in exactly one architecture: a file whose shapes say otherwise is damaged
(a truncated download, a partial state dict) unless the user's overrides say it is intended.
OpenLRM was released in several sizes, so its sizes are only inferred."""


def _check_known_architecture(inferred: dict[str, Any], format: str) -> None:
    """Refuse a `format` file whose inferred sizes differ from the one released architecture."""
    if format not in KNOWN_ARCHITECTURES:
        return
    released = config_lib.to_dict(KNOWN_ARCHITECTURES[format]())
    differences = [
        f"{section}.{name} = {value} (released: {released[section][name]})"
        for section, values in inferred.items()
        for name, value in values.items()
        if released[section][name] != value
    ]
    if differences:
        raise CheckpointFormatError(
            f"this is not the released {format} architecture: {'; '.join(differences[:MAX_LISTED])}. "
            "The file may be truncated or partial; to import a different architecture on purpose, pass it with --config"
        )


def _build_config(state: dict[str, torch.Tensor], format: str, overrides: dict[str, Any]) -> ReconstructorConfig:
    inferred = infer_sizes(state, format)
    if not overrides:
        _check_known_architecture(inferred, format)
    config = ReconstructorConfig()
    for layer in (RELEASE_DEFAULTS[format], inferred, overrides):
        config = config_lib.merge(config, layer)
    try:
        return config.validate()
    except config_lib.ConfigError as error:
        raise CheckpointFormatError(f"{error} (sizes are inferred from the weights; set what they cannot tell with overrides)") from None

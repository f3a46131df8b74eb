"""One typed spec per `vf3d` command: its options, their checks and the library call, in one place.

A spec is a dataclass whose fields are the command's options. The same class is

- the command line: `vf3d.cli.build_parser` generates every sub-command from the fields (field
  `data_3d` is the flag `--data-3d`; help, metavar, choices and default come from its `option`);
- the job file: `vf3d.jobs` checks a job file's `args:` against the fields' types and builds an
  instance from them (plus the options given after the job file on the command line);
- the Python API: build an instance and run it with `execute`, which is what the other two do:

    from pathlib import Path
    from vf3d.specs import TrainRecon, execute, resolve_config

    spec = TrainRecon(data=Path("orbits"), out=Path("reconstructor"), preset="debug", seed=3)
    resolve_config(spec).training.run.seed  # 3: the config the run will use
    execute(spec)  # what `vf3d train-recon --data orbits --out reconstructor --preset debug --seed 3` runs

Field types say how an option is given: `Path`, `Location` (a local path or an object-store URI
such as s3://bucket/prefix, kept as text: `Path` would turn it into the local `s3:/bucket/prefix`), `int | None`, `float | None`, `str | None` (one
value), `bool` (a flag without a value), `Literal[...]` (one of these), `list[Path]` (a flag given
once per item) and `tuple[float, float]` (a flag taking two values). A field without a default is
required. `option(..., sets="training.run.seed")` makes the option override that config field when
given, so an option that sets one config field is one line here.

`execute(spec)` resolves the config (the preset, the --config file, then the `sets` overrides,
validated), runs the spec's `check`, connects to Ray when the command needs it (`--address`,
else $RAY_ADDRESS, else a private local cluster) and calls its `run`.

Only the standard library, the config modules (vf3d.config and each component's `config`) and
`vf3d.storage` (standard library only until a URI is used) are imported at module level (the library lazily).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from vf3d import config as config_lib
from vf3d.config import ConfigError
from vf3d.evaluation.config import EVALUATE_PRESETS
from vf3d.models.reconstructor.config import INFERENCE_PRESETS, RECONSTRUCTOR_PRESETS
from vf3d.serving.config import SERVE_PRESETS
from vf3d.storage import Location
from vf3d.synthesis.config import RENDER_ASSETS_PRESETS, SYNTHESIZE_PRESETS, TRAIN_FILTER_PRESETS
from vf3d.training.config import FINETUNE_VIDEO_PRESETS, TRAIN_RECON_PRESETS

Log = Callable[[str], None]
SpecType = TypeVar("SpecType", bound="type[Spec]")

MESH_SUFFIXES = (".glb", ".obj", ".ply")
"""What `image-to-3d --out` may end in."""
SCALAR_TYPES = (Path, Location, int, float, str, bool)
"""What one value of an option may be."""
_OPTION_KEY = "vf3d.option"
"""Where `option` keeps an option's settings in a dataclass field's metadata."""


class UsageError(ValueError):
    """Bad input found by a spec's own checks (a missing path, a wrong suffix, ...)."""


def print_flushed(message: str) -> None:
    """The default log: print at once (a job's driver output is streamed to `vf3d submit --wait`)."""
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Building specs: option() fields and the @command decorator
# ---------------------------------------------------------------------------------------------


def option(
    help: str,
    *,
    default: Any = dataclasses.MISSING,
    sets: str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    choices: tuple[str, ...] | None = None,
    positional: bool = False,
) -> Any:
    """A spec field that is a command option.

    Args:
        help: the --help text (argparse's `%(default)s` works).
        default: the value when not given; without one the option is required.
        sets: dotted path of the config field a given value overrides (e.g. "training.run.seed").
        metavar: what --help shows for the value(s).
        choices: allowed values of a `str` option whose choices are only known at run time (a
            `Literal[...]` annotation says the same for fixed ones).
        positional: an argument without a flag (`vf3d image-to-3d IMAGE`).
    """
    settings = {"help": help, "sets": sets, "metavar": metavar, "choices": choices, "positional": positional}
    return dataclasses.field(default=default, metadata={_OPTION_KEY: settings})


class Spec:
    """Base of the command specs: the class attributes `@command` sets, and the hooks a spec fills in."""

    command: ClassVar[str]
    """The `vf3d` sub-command."""
    help: ClassVar[str]
    """Its one-line summary in `vf3d --help`."""
    description: ClassVar[str]
    """Its description in `vf3d COMMAND --help`."""
    presets: ClassVar[Mapping[str, Callable[[], Any]] | None] = None
    """Its preset table (then it has --preset and --config), or None."""
    default_preset: ClassVar[str | None] = None
    uses_ray: ClassVar[bool] = False
    """Runs connected to a Ray cluster (then it has --address)."""
    runs_as_job: ClassVar[bool] = False
    """Has a Ray job entrypoint, jobs/<command>.py, and job config files."""
    config_kind: ClassVar[str | None] = None
    """Name of its preset table in `vf3d show-config` (the command's name unless set)."""

    def __post_init__(self) -> None:
        # A `Location` option given a Path through the Python API holds it as text, as the
        # command line does, so both build equal specs.
        for item in options(type(self)):
            value = getattr(self, item.name)
            if item.kind is Location and value is not None:
                normalised = [Location(element) for element in value] if item.repeated else Location(value)
                object.__setattr__(self, item.name, normalised)

    def config_overrides(self) -> dict[str, Any]:
        """Config overrides from the options given (nested by the dotted `sets` paths): a value
        that is not None (nor a flag left off) overrides; paths become strings."""
        overrides: dict[str, Any] = {}
        for item in options(type(self)):
            value = getattr(self, item.name)
            if item.sets is None or value is None or value is False:
                continue
            *parents, leaf = item.sets.split(".")
            target = overrides
            for key in parents:
                target = target.setdefault(key, {})
            target[leaf] = _config_value(value)
        return overrides

    def check(self, config: Any) -> None:
        """Check paths and combinations of options, and whatever else can fail before Ray starts
        (UsageError, one line). `config`: the resolved config (None without presets)."""

    def run(self, config: Any, log: Log = print_flushed) -> None:
        """Do the work (connected to Ray when `uses_ray`)."""
        raise NotImplementedError


SPECS: dict[str, type[Spec]] = {}
"""Every command spec by command name, in the order `vf3d --help` lists them."""

ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS, else start a private local cluster)"
PRESET_HELP = "named settings to start from (default: %(default)s)"
CONFIG_HELP = "YAML/JSON file overriding preset fields (unknown keys are rejected)"


def command(
    name: str,
    *,
    help: str,
    description: str,
    presets: Mapping[str, Callable[[], Any]] | None = None,
    default_preset: str | None = None,
    uses_ray: bool = False,
    runs_as_job: bool = False,
    config_kind: str | None = None,
) -> Callable[[SpecType], SpecType]:
    """Make a class of `option` fields the spec of `vf3d NAME` (a keyword-only dataclass) and
    register it. Adds the options every such command shares, after its own: --address when it
    `uses_ray`, and --preset and --config when it has `presets`."""

    def register(cls: SpecType) -> SpecType:
        shared: dict[str, tuple[Any, Any]] = {}
        if uses_ray:
            shared["address"] = (str | None, option(ADDRESS_HELP, default=None))
        if presets is not None:
            assert default_preset in presets, f"{name}: default preset {default_preset!r} is not in its table"
            shared["preset"] = (str, option(PRESET_HELP, default=default_preset, choices=tuple(presets)))
            shared["config"] = (Path | None, option(CONFIG_HELP, default=None))
        if "__annotations__" not in cls.__dict__:
            cls.__annotations__ = {}
        for field_name, (annotation, field) in shared.items():
            cls.__annotations__[field_name] = annotation
            setattr(cls, field_name, field)
        cls.command, cls.help, cls.description = name, help, description
        cls.presets, cls.default_preset, cls.uses_ray, cls.runs_as_job = presets, default_preset, uses_ray, runs_as_job
        cls.config_kind = config_kind or (name if presets is not None else None)
        spec = dataclasses.dataclass(kw_only=True)(cls)
        class_attributes = {"command", "help", "description", "presets", "default_preset", "uses_ray", "runs_as_job", "config_kind"}
        clashes = {field.name for field in dataclasses.fields(spec)} & class_attributes
        assert not clashes, f"{name}: option names clash with spec attributes: {clashes}"
        SPECS[name] = spec
        return spec

    return register


# ---------------------------------------------------------------------------------------------
# Reading specs: their options, as parser arguments and command lines
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a spec, read from its field: what the parser, the job-file check and
    `to_argv` need to know."""

    name: str
    """The field's name (argparse's dest; a job file's key)."""
    kind: type
    """Type of one value: Path, int, float, str or bool (a flag without a value)."""
    repeated: bool
    """list[...]: the flag is given once per item (action=append)."""
    count: int | None
    """tuple[...]: the flag takes this many values (nargs)."""
    choices: tuple[Any, ...] | None
    required: bool
    default: Any
    help: str
    sets: str | None
    metavar: str | tuple[str, ...] | None
    positional: bool

    @property
    def flag(self) -> str:
        """`--data-3d` for field `data_3d`; a positional argument's name as it is."""
        return self.name if self.positional else "--" + self.name.replace("_", "-")


@functools.cache
def options(spec: type[Spec]) -> tuple[Option, ...]:
    """The spec's options in field order, typed from the fields' annotations."""
    hints = typing.get_type_hints(spec)
    found = []
    for field in dataclasses.fields(spec):
        settings = field.metadata[_OPTION_KEY]
        kind, repeated, count, choices = _read_annotation(hints[field.name], f"{spec.__name__}.{field.name}")
        found.append(
            Option(
                name=field.name,
                kind=kind,
                repeated=repeated,
                count=count,
                choices=settings["choices"] or choices,
                required=field.default is dataclasses.MISSING,
                default=None if field.default is dataclasses.MISSING else field.default,
                help=settings["help"],
                sets=settings["sets"],
                metavar=settings["metavar"],
                positional=settings["positional"],
            )
        )
    return tuple(found)


def _read_annotation(annotation: Any, where: str) -> tuple[type, bool, int | None, tuple[Any, ...] | None]:
    """(type of one value, repeated, count, choices) of a field annotation; `X | None` reads as X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    repeated, count, choices = False, None, None
    if origin is list:
        (annotation,), repeated = args, True
    elif origin is tuple:
        if len(set(args)) != 1 or Ellipsis in args:
            raise TypeError(f"{where}: a tuple option takes values of one type, e.g. tuple[float, float]")
        annotation, count = args[0], len(args)
    elif origin is Literal:
        annotation, choices = type(args[0]), args
    if annotation not in SCALAR_TYPES:
        raise TypeError(f"{where}: options are Path, int, float, str, bool, Literal, list or tuple of those, not {annotation!r}")
    return annotation, repeated, count, choices


def add_arguments(parser: argparse.ArgumentParser, spec: type[Spec], *, partial: bool = False) -> None:
    """Add the spec's options to a `vf3d COMMAND` parser. `partial`: the namespace gets only what
    the command line gives (no defaults, nothing required), which is how options given after a
    job file are read."""
    for item in options(spec):
        settings: dict[str, Any] = {"help": item.help}
        if item.kind is bool:
            settings["action"] = "store_true"
        else:
            settings["type"] = item.kind
            if item.repeated:
                settings["action"] = "append"
            if item.count is not None:
                settings["nargs"] = item.count
        if item.choices is not None:
            settings["choices"] = list(item.choices)
        if item.metavar is not None:
            settings["metavar"] = item.metavar
        if partial:
            settings["default"] = argparse.SUPPRESS
            if item.positional:
                settings["nargs"] = "?"
        elif item.required:
            if not item.positional:  # argparse requires positional arguments anyway
                settings["required"] = True
        else:
            settings["default"] = item.default
        parser.add_argument(item.flag, **settings)


def from_namespace(namespace: argparse.Namespace) -> Spec:
    """The spec instance of a parsed `vf3d COMMAND ...` (the parser from `add_arguments`)."""
    spec = SPECS[namespace.command]
    values = {}
    for item in options(spec):
        value = getattr(namespace, item.name)
        values[item.name] = tuple(value) if item.count is not None and value is not None else value  # argparse's nargs gives a list
    return spec(**values)


def build(command: str, values: Mapping[str, Any]) -> Spec:
    """The spec instance of `command` from option values by field name (None: not given), or a
    UsageError naming the required options that are missing."""
    spec = SPECS[command]
    missing = [item.flag for item in options(spec) if item.required and values.get(item.name) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    return spec(**{name: value for name, value in values.items() if value is not None})


def to_argv(command: str, values: Mapping[str, Any]) -> list[str]:
    """The `vf3d` command line (without "vf3d") giving these option values, by field name, in
    their order (None and flags left off are left out)."""
    spec = SPECS[command]
    flags: list[str] = []
    positionals: list[str] = []
    for name, value in values.items():
        item = _option(spec, name)
        if value is None or value is False:
            continue
        if item.positional:
            positionals.append(str(value))
        elif item.kind is bool:
            flags.append(item.flag)
        elif item.repeated:
            for element in value:
                flags += [item.flag, str(element)]
        elif item.count is not None:
            flags += [item.flag, *map(str, value)]
        else:
            flags += [item.flag, str(value)]
    return [command, *positionals, *flags]


def _option(spec: type[Spec], name: str) -> Option:
    for item in options(spec):
        if item.name == name:
            return item
    raise KeyError(f"{spec.command} has no option {name!r}")


def _config_value(value: Any) -> Any:
    """An option value as a config field holds it: paths as strings, sequences as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_config_value(element) for element in value]
    return value


# ---------------------------------------------------------------------------------------------
# Running specs
# ---------------------------------------------------------------------------------------------


def resolve_config(spec: Spec) -> Any:
    """The validated config the spec runs with: its preset, overridden by its --config file, then
    by the options that `sets` config fields. None for a command without presets."""
    if spec.presets is None:
        return None
    config = config_lib.resolve(spec.presets, spec.preset, spec.config)
    overrides = spec.config_overrides()
    return config_lib.merge(config, overrides).validate() if overrides else config


def execute(spec: Spec, log: Log = print_flushed) -> None:
    """Run a command: resolve its config, check its inputs, connect to Ray when it needs it, run.

    Bad input raises one of `input_errors()` (before any work where it can be told early)."""
    check_config_file(getattr(spec, "config", None))
    config = resolve_config(spec)
    spec.check(config)
    if not spec.uses_ray:
        spec.run(config, log)
        return
    from vf3d.ray_runtime import ray_cluster

    with ray_cluster(spec.address, log=log):
        spec.run(config, log)


def run_command(spec: Spec, log: Log = print_flushed) -> int:
    """`execute` as the `vf3d` command and the job entrypoints run it: 0 when done; bad input
    gives one line "vf3d COMMAND: error: ..." on stderr and 2. Other failures keep their traceback."""
    try:
        execute(spec, log)
    except input_errors() as error:
        report_input_error(spec.command, error)
        return 2
    return 0


def input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is bad" (exit 2, one line, no traceback)."""
    from vf3d.data.assets import AssetError
    from vf3d.data.shards import ShardFormatError
    from vf3d.mesh import EmptyMeshError
    from vf3d.models.pretrained import ModelDirectoryError
    from vf3d.models.release_weights import CheckpointFormatError
    from vf3d.preprocess import ImageInputError
    from vf3d.synthesis.quality import LabelsError
    from vf3d.training.checkpointing import CheckpointError

    return (
        UsageError,
        ConfigError,
        ImageInputError,
        ModelDirectoryError,
        CheckpointFormatError,
        CheckpointError,
        EmptyMeshError,
        AssetError,
        ShardFormatError,
        LabelsError,
    )


def report_input_error(command: str, error: BaseException) -> None:
    """The one stderr line of bad input: "vf3d COMMAND: error: <the message's first line>"."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"vf3d {command}: error: {message}", file=sys.stderr)


def check_config_file(path: Path | None) -> None:
    """A --config that is a directory is named as such (every loader would say "not found")."""
    if isinstance(path, Path) and path.is_dir():
        raise UsageError(f"--config: {path} is a directory, not a YAML/JSON file")


def check_path(path: Path | Location, flag: str | None, kind: str, directory: bool) -> None:
    """UsageError unless `path` (a local path or an object-store URI) is an existing directory (or
    file): a path of the wrong kind is named as such, not reported as missing ("X is a file, not a
    model directory")."""
    from vf3d import storage

    if storage.is_uri(path):
        try:
            found = storage.is_dir(path) if directory else storage.is_file(path)
            present = found or storage.exists(path)
        except (storage.StorageError, OSError) as error:
            raise UsageError(f"{flag + ': ' if flag else ''}{error}") from None
    else:
        path = Path(path)
        found, present = (path.is_dir() if directory else path.is_file()), path.exists()
    if found:
        return
    prefix = f"{flag}: " if flag else ""
    if not present:
        raise UsageError(f"{prefix}{kind} not found: {path}")
    article = "an" if kind[0] in "aeiou" else "a"
    raise UsageError(f"{prefix}{path} is a {'file' if directory else 'directory'}, not {article} {kind}")


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------


@command(
    "image-to-3d",
    help="reconstruct a mesh (and a turntable video) from one image",
    description="Reconstruct a vertex-coloured mesh from a single image with a reconstructor directory; optionally render a turntable MP4.",
    presets=INFERENCE_PRESETS,
    default_preset="auto",
    config_kind="inference",
)
class ImageTo3D(Spec):
    """One image → a mesh, optionally a turntable video, and a JSON summary next to the mesh."""

    image: Location = option(
        "input image (PNG/JPEG/WebP...; an alpha channel is used as the foreground mask); a path or URI", positional=True
    )
    model: Location = option("reconstructor directory (config.json + model.safetensors); a path or URI")
    out: Location = option("output mesh: .glb (default viewer format), .obj or .ply; a path or URI")
    video: Location | None = option("also write a turntable video to this .mp4 (a path or URI)", default=None)
    mesh_resolution: int | None = option("marching-cubes grid size per axis (default: the model's)", default=None, sets="mesh_resolution")
    mesh_iso: str | None = option("density level of the surface, or 'auto' (Otsu); default: the model's", default=None)
    seed: int | None = option("use seeded random ray sampling instead of the default deterministic sampling", default=None, sets="seed")
    device: str | None = option("auto (default), cpu or cuda[:N]", default=None, sets="device")

    def config_overrides(self) -> dict[str, Any]:
        overrides = super().config_overrides()
        if self.mesh_iso is not None:
            overrides["mesh_iso"] = self.mesh_iso if self.mesh_iso == "auto" else _number(self.mesh_iso, "--mesh-iso")
        if self.seed is not None:  # a seed only matters to random sampling
            overrides["deterministic"] = False
        return overrides

    def check(self, config: Any) -> None:
        from vf3d import storage

        out_name, video_name = storage.name(self.out), None if self.video is None else storage.name(self.video)
        if Path(out_name).suffix.lower() not in MESH_SUFFIXES:
            raise UsageError(f"--out must end in one of {', '.join(MESH_SUFFIXES)}, got {out_name!r}")
        if video_name is not None and Path(video_name).suffix.lower() != ".mp4":
            raise UsageError(f"--video must end in .mp4, got {video_name!r}")
        check_path(self.image, None, "image file", directory=False)
        check_path(self.model, "--model", "model directory", directory=True)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from tqdm import tqdm

        from vf3d import storage
        from vf3d.atomic import write_bytes_atomic
        from vf3d.inference import ImageTo3D as ImageTo3DPipeline
        from vf3d.preprocess import load_image

        image = storage.read_bytes(self.image) if storage.is_uri(self.image) else Path(self.image)
        load_image(image)  # fail fast on a bad image, before loading the model
        started = time.perf_counter()
        pipeline = ImageTo3DPipeline.from_pretrained(self.model, config)
        config = pipeline.config  # with the model's and the device's defaults filled in
        log(f"loaded {self.model} on {pipeline.device} in {time.perf_counter() - started:.1f}s")
        log(
            f"mesh {config.mesh_resolution}³"
            + (f", turntable {config.turntable_views} views at {config.turntable_size}²" if self.video is not None else "")
            + f" ({'exact' if config.exact else 'fast'} path)"
        )
        # The turntable is the long step (a minute on the CPU): a bar with an ETA, on stderr.
        with tqdm(total=config.turntable_views, desc="turntable", unit="view", disable=self.video is None, leave=False) as bar:
            result = pipeline.run(image, self.out, self.video, progress=bar.update)
        summary = {
            "image": str(self.image),
            "model": str(self.model),
            "mesh": str(result.mesh_path),
            "video": None if result.video_path is None else str(result.video_path),
            "iso": result.iso,
            "vertices": len(result.mesh.mesh.vertices),
            "faces": len(result.mesh.mesh.faces),
            "timings_s": {key: round(value, 3) for key, value in result.timings.items()},
            "config": config_lib.to_dict(config),
        }
        summary_path = write_bytes_atomic(f"{self.out}.json", (json.dumps(summary, indent=2) + "\n").encode())
        log(f"mesh: {result.mesh_path} ({summary['vertices']} vertices, {summary['faces']} faces, iso {result.iso:.3g})")
        if result.video_path is not None:
            log(f"video: {result.video_path} ({config.turntable_views} frames)")
        log(f"summary: {summary_path}")


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'auto', got {text!r}") from None


@command(
    "init-model",
    help="write a randomly initialised reconstructor directory from a preset",
    description="Create a reconstructor directory with random weights (a starting point for training, or a debug model).",
    presets=RECONSTRUCTOR_PRESETS,
    default_preset="debug",
    config_kind="reconstructor",
)
class InitModel(Spec):
    """A reconstructor directory with random weights."""

    out: Location = option("directory to write config.json + model.safetensors into; a path or URI")
    seed: int = option("weight initialisation seed (default: %(default)s)", default=0)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        import torch

        from vf3d.models.reconstructor import Reconstructor

        torch.manual_seed(self.seed)
        model = Reconstructor(config)
        model.save_pretrained(self.out, metadata={"created_by": f"vf3d init-model --preset {self.preset} --seed {self.seed}"})
        parameters = sum(p.numel() for p in model.parameters())
        log(f"wrote a randomly initialised {self.preset!r} reconstructor ({parameters:,} parameters) to {self.out}")


@command(
    "import-checkpoint",
    help="convert released VFusion3D/OpenLRM weights into a reconstructor directory",
    description="Map a released checkpoint (safetensors, or a torch.save dict under model_state_dict, loaded weights-only) into our model "
    "directory; sizes are inferred from tensor shapes. An s3:// or gs:// checkpoint is downloaded to a temporary file first.",
)
class ImportCheckpoint(Spec):
    """Released weights → a reconstructor directory (the importer reads shapes; --config the rest)."""

    src: Location = option(
        "released checkpoint file (.safetensors, .pt, .pth, .bin) or a directory holding model.safetensors; a path or URI", positional=True
    )
    format: Literal["vfusion3d", "openlrm"] = option("layout of the source checkpoint")
    out: Location = option("reconstructor directory to write; a path or URI")
    config: Path | None = option(
        "YAML/JSON overrides for what shapes cannot tell (e.g. transformer.num_heads, encoder.image_size)", default=None
    )

    def check(self, config: Any) -> None:
        """One line for a checkpoint path (or URI) that is missing, a directory without
        model.safetensors, empty or unreadable; what the bytes hold is judged by the importer."""
        from vf3d import storage

        src = storage.local_or_uri(self.src)
        try:
            if not storage.exists(src):
                raise UsageError(f"checkpoint not found: {src}")
            if storage.is_dir(src):
                if not storage.is_file(storage.join(src, "model.safetensors")):
                    raise UsageError(
                        f"{src} is a directory without model.safetensors; give the checkpoint file itself (.safetensors, .pt, .pth, .bin)"
                    )
                src = storage.join(src, "model.safetensors")
            if not storage.is_file(src):
                raise UsageError(f"{src} is not a regular file")
            if storage.is_uri(src):
                empty = storage.size(src) == 0
            else:
                with open(src, "rb") as file:
                    empty = not file.read(1)
        except (storage.StorageError, OSError) as error:
            raise UsageError(f"cannot read checkpoint {src}: {getattr(error, 'strerror', None) or error}") from None
        if empty:
            raise UsageError(f"checkpoint {src} is an empty file")

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.models.release_weights import import_checkpoint

        overrides = config_lib.load_overrides(self.config) if self.config else None
        out = import_checkpoint(self.src, self.out, format=self.format, overrides=overrides)
        log(f"imported {self.format} checkpoint {self.src} into {out}")


@command(
    "render-assets",
    help="render a folder of 3D assets into orbit shards (Ray Data)",
    description="Render every mesh under --assets (GLB/glTF/OBJ/PLY/STL/OFF) into orbit videos stored as Parquet shards, on an elastic Ray "
    "Data actor pool. Resumable: a rerun renders only what is missing.",
    presets=RENDER_ASSETS_PRESETS,
    default_preset="small",
    uses_ray=True,
    runs_as_job=True,
)
class RenderAssets(Spec):
    """A folder of meshes → orbit shards."""

    assets: Location = option(
        "directory of meshes (searched recursively; optional captions.json/jsonl maps relative paths to prompts); a path or URI"
    )
    out: Location = option("shard directory (orbits-*.parquet, _errors/, render_summary.json); a path or URI")
    views: int | None = option("orbit views per asset (preset: 16)", default=None, sets="render.num_views")
    resolution: int | None = option("frame side in pixels", default=None, sets="render.resolution")
    elevation_range: tuple[float, float] | None = option(
        "elevation range in degrees, one draw per asset (default 0 45)",
        default=None,
        metavar=("MIN", "MAX"),
        sets="render.elevation_range_deg",
    )

    def check(self, config: Any) -> None:
        check_path(self.assets, "--assets", "directory of meshes", directory=True)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.synthesis.render_assets import render_assets

        render_assets(self.assets, self.out, config, log=log)


@command(
    "finetune-video",
    help="fine-tune the orbit video model on orbit shards (Ray Train + DeepSpeed)",
    description="Fine-tune the multi-view video model on orbit shards with Ray Train and DeepSpeed (ZeRO 0/2/3), checkpointing every N "
    "steps; a rerun with the same --name resumes. The final model is written to --out in the diffusers save_pretrained layout.",
    presets=FINETUNE_VIDEO_PRESETS,
    default_preset="debug",
    uses_ray=True,
    runs_as_job=True,
)
class FinetuneVideo(Spec):
    """Orbit shards → a fine-tuned orbit video model."""

    data: Location = option("orbit shard directory (from render-assets or synthesize); a path or s3://, gs:// URI")
    out: Location = option("directory for the exported model (diffusers layout), the resolved config and the run summary; a path or URI")
    name: str | None = option(
        "run name; rerunning with the same name and storage resumes from its latest checkpoint", default=None, sets="training.run.name"
    )
    storage_path: Location | None = option(
        "where checkpoints go, a path or s3://, gs:// URI (default: OUT/training_runs)", default=None, sets="training.run.storage_path"
    )
    max_steps: int | None = option("total optimizer steps", default=None, sets="training.run.max_steps")

    def check(self, config: Any) -> None:
        from vf3d.data.shards import list_shard_files

        check_path(self.data, "--data", "shard directory", directory=True)
        if not list_shard_files(self.data):
            raise UsageError(f"--data holds no orbit shards: {self.data} (make some with `vf3d render-assets`)")

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.training.video import finetune_video

        finetune_video(self.data, self.out, config, log=log)


@command(
    "synthesize",
    help="generate filtered synthetic orbit shards from prompts or images (Ray Data)",
    description="Prompts (or images) → first frames → orbit videos → foreground masks → quality filter → orbit shards (source=synthetic), "
    "each model stage on its own elastic Ray Data actor pool. Every input ends in exactly one table: kept orbits, _rejected/ (with scores "
    "and reasons) or _errors/ (with the reason). Resumable: a rerun with the same arguments processes only the missing ids.",
    presets=SYNTHESIZE_PRESETS,
    default_preset="node",
    uses_ray=True,
    runs_as_job=True,
)
class Synthesize(Spec):
    """Prompts or images → filtered synthetic orbit shards."""

    prompts: Location = option(
        "Parquet/CSV/JSONL with columns id, prompt and optional image (bytes or a path relative to the file) and "
        "elevation (degrees); or a folder of images (a path or s3://, gs:// URI)"
    )
    video_model: Location = option("fine-tuned orbit video model directory (from finetune-video; a path or URI)")
    out: Location = option("shard directory (synthetic-*.parquet, _rejected/, _errors/, synthesize_summary.json); a path or URI")
    text_to_image: Location | None = option(
        "local diffusers text-to-image pipeline drawing first frames for inputs without an image (sets generation.text_to_image_path)",
        default=None,
        sets="generation.text_to_image_path",
    )
    probe: Location | None = option(
        "quality probe directory from train-filter (sets filter.probe_path; default: heuristics only)",
        default=None,
        sets="filter.probe_path",
    )
    retry_errors: bool = option(
        "also retry inputs that failed in an earlier run (their old error rows are archived)", default=False, sets="retry_errors"
    )

    def check(self, config: Any) -> None:
        from vf3d.synthesis.synthesize import read_inputs, video_model_settings

        check_path(self.video_model, "--video-model", "video model directory", directory=True)
        video_model_settings(self.video_model)  # fail fast on bad inputs, before Ray starts
        read_inputs(self.prompts)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.synthesis.synthesize import synthesize

        synthesize(self.prompts, self.video_model, self.out, config, log=log)


@command(
    "train-filter",
    help="fit the synthetic-orbit quality probe from labelled orbits",
    description="Fit a linear probe on frozen DINOv2 features of labelled orbits (good/bad), hold out a share to measure it, and write the "
    "probe directory that `synthesize --probe` uses.",
    presets=TRAIN_FILTER_PRESETS,
    default_preset="dinov2-base",
)
class TrainFilter(Spec):
    """Labelled orbits → the quality probe `synthesize --probe` uses."""

    labels: Location = option("CSV/JSONL/Parquet with columns id and label (good/bad, keep/reject, 1/0, true/false); a path or URI")
    data: list[Location] = option("shard directory holding the labelled orbits (kept or _rejected/); a path or URI; repeat for several")
    out: Location = option("probe directory to write (config.json, model.safetensors, filter_report.json); a path or URI")
    encoder: Location | None = option(
        "DINOv2 directory (transformers layout), a path or URI (sets encoder.encoder.pretrained_path)",
        default=None,
        sets="encoder.encoder.pretrained_path",
    )

    def check(self, config: Any) -> None:
        from vf3d import storage

        try:
            missing = [str(path) for path in self.data if not storage.exists(path)]
        except (storage.StorageError, OSError) as error:
            raise UsageError(f"--data: {error}") from None
        if missing:
            raise UsageError(f"--data directories not found: {missing}")
        for path in self.data:
            check_path(path, "--data", "shard directory", directory=True)
        check_path(self.labels, "--labels", "labels file", directory=False)
        if self.encoder is not None:
            check_path(self.encoder, "--encoder", "DINOv2 directory", directory=True)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.synthesis.quality import train_filter

        train_filter(self.labels, list(self.data), self.out, config, log=log)


@command(
    "train-recon",
    help="train the image→3D reconstructor on orbit shards (Ray Train + DeepSpeed)",
    description="Train the reconstructor with VFusion3D's recipe: a stage schedule of render resolutions and crops on synthetic orbits "
    "(LPIPS + opacity + TV, camera noise), then a fine-tune on real renders with pixel loss. Checkpoints every N steps; a rerun with the "
    "same --name resumes. Writes a reconstructor directory that image-to-3d loads, validation metrics (JSONL) and plots.",
    presets=TRAIN_RECON_PRESETS,
    default_preset="debug",
    uses_ray=True,
    runs_as_job=True,
)
class TrainRecon(Spec):
    """Orbit shards → a trained reconstructor directory."""

    data: Location | None = option("synthetic orbit shards (from synthesize) for the synthetic stages; a path or URI", default=None)
    data_3d: Location | None = option(
        "orbit shards rendered from 3D assets (from render-assets) for the 3D fine-tune stage; a path or URI", default=None
    )
    out: Location = option("reconstructor directory to write (plus train_log.jsonl, validation.jsonl, plots, checkpoints); a path or URI")
    init: Location | None = option(
        "reconstructor directory to start from (e.g. imported released weights); a path or URI", default=None, sets="init_path"
    )
    name: str | None = option(
        "run name; rerunning with the same name and storage resumes from its latest checkpoint", default=None, sets="training.run.name"
    )
    storage_path: Location | None = option(
        "where checkpoints go, a path or s3://, gs:// URI (default: OUT/training_runs)", default=None, sets="training.run.storage_path"
    )
    seed: int | None = option("seed of model initialisation and data order (default: the preset's)", default=None, sets="training.run.seed")

    def check(self, config: Any) -> None:
        if self.data is None and self.data_3d is None:
            raise UsageError("give --data (synthetic orbit shards) and/or --data-3d (rendered orbit shards)")
        for flag, path, kind in [
            ("--data", self.data, "shard directory"),
            ("--data-3d", self.data_3d, "shard directory"),
            ("--init", self.init, "model directory"),
        ]:
            if path is not None:
                check_path(path, flag, kind, directory=True)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.training.recon import train_recon

        train_recon(self.data, self.data_3d, self.out, config, log=log)


@command(
    "evaluate",
    help="score reconstructors on held-out orbits: PSNR/SSIM/LPIPS, CLIP, Chamfer/F-score",
    description="Reconstruct every orbit of --data from its view 0 and compare novel views with the true ones (PSNR, SSIM, LPIPS), CLIP "
    "image/text similarity of the predicted views (weights from a path or URI), and Chamfer distance / F-score of the mesh against the "
    "source asset under --assets. Writes metrics.json, report.md and figures/ into --out; with several --model (or --compare) the report "
    "compares them with the first.",
    presets=EVALUATE_PRESETS,
    default_preset="full",
    runs_as_job=True,
)
class Evaluate(Spec):
    """Reconstructors + held-out orbits → metrics.json, report.md and figures (on this process: no Ray)."""

    model: list[Location] = option(
        "reconstructor directory (a path or URI); repeat to compare models (the first is the baseline)", metavar="DIR"
    )
    compare: list[Location] | None = option(
        "another reconstructor directory to compare with the first --model", default=None, metavar="DIR"
    )
    data: Location = option("orbit shards of held-out objects (from render-assets or synthesize); a path or URI", metavar="DIR")
    out: Location = option("report directory (metrics.json, report.md, figures/, evaluate_config.json); a path or URI", metavar="DIR")
    assets: Location | None = option(
        "root the shards' asset paths are relative to (the --assets of render-assets): enables Chamfer/F-score", default=None, metavar="DIR"
    )
    limit: int | None = option("evaluate at most N orbits (the first by id, or by --ids order)", default=None, metavar="N", sets="limit")
    ids: Location | None = option("text file of orbit ids to evaluate, one per line", default=None, metavar="FILE")
    clip: Location | None = option(
        "open_clip weights: a checkpoint file for clip.model, or a directory with open_clip_config.json; a path or URI "
        "(sets clip.weights_path)",
        default=None,
        metavar="PATH",
        sets="clip.weights_path",
    )
    lpips_backbone: Location | None = option(
        "torchvision state dict of the LPIPS backbone, e.g. alexnet-owt-7be5be79.pth; a path or URI (sets lpips.backbone_path)",
        default=None,
        metavar="FILE",
        sets="lpips.backbone_path",
    )
    device: str | None = option("auto (default), cpu or cuda[:N]", default=None, sets="inference.device")

    @property
    def models(self) -> list[Location]:
        """Every --model, then every --compare: the first is the baseline."""
        return [*self.model, *(self.compare or [])]

    def check(self, config: Any) -> None:
        from vf3d import storage

        for flag, path in [("--data", self.data), ("--assets", self.assets)] + [("--model", model) for model in self.models]:
            if path is not None and not storage.is_dir(path):
                raise UsageError(f"{flag}: not a directory: {path}")
        for flag, path in [("--ids", self.ids), ("--lpips-backbone", self.lpips_backbone)]:
            try:
                is_dir = path is not None and storage.is_dir(path)
            except (storage.StorageError, OSError) as error:
                raise UsageError(f"{flag}: {error}") from None
            if is_dir:  # a missing one is reported by its loader
                raise UsageError(f"{flag}: {path} is a directory, not a file")
        from vf3d.inference import resolve_device

        resolve_device(config.inference.device)  # a CUDA-less machine fails here, before any orbit is read

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.evaluation.evaluate import evaluate, read_ids_file

        ids = read_ids_file(self.ids) if self.ids is not None else None
        evaluate(self.models, self.data, self.out, config, assets_dir=self.assets, ids=ids, log=log)


@command(
    "sample-assets",
    help="copy real sample meshes shipped in pybullet_data into a folder",
    description="Gather the textured duck, soccer ball, table, tray, jenga, domino and random_urdfs objects from pybullet_data "
    "(pip install 'vf3d[assets]') into a self-contained folder.",
)
class SampleAssets(Spec):
    """pybullet_data's sample meshes → a folder."""

    out: Location = option("directory to copy the meshes (and their materials and textures) into; a path or URI")
    limit: int | None = option("at most this many assets (the named ones first)", default=None)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.data.assets import gather_sample_assets

        paths = gather_sample_assets(self.out, limit=self.limit)
        log(f"gathered {len(paths)} sample assets from pybullet_data into {self.out}")


@command(
    "serve",
    help="serve a reconstructor as an HTTP endpoint (Ray Serve)",
    description="Deploy the image-to-3D endpoint (POST /v1/image-to-3d, POST /v1/turntable, GET /healthz, a web page at /) for a "
    "reconstructor directory on Ray Serve, with batched model replicas and CPU mesh replicas; blocks until Ctrl-C. Set VF3D_API_KEY to "
    "require 'Authorization: Bearer <key>'.",
    presets=SERVE_PRESETS,
    default_preset="debug",
    uses_ray=True,
)
class Serve(Spec):
    """A reconstructor directory → the image-to-3D endpoint on Ray Serve (until Ctrl-C)."""

    model: Location = option("reconstructor directory (config.json + model.safetensors); a path or URI")
    port: int | None = option("HTTP port (preset: 8000)", default=None, sets="port")
    host: str | None = option("HTTP host (debug preset: 127.0.0.1; 0.0.0.0 listens on every interface)", default=None, sets="host")

    def check(self, config: Any) -> None:
        import os

        from vf3d.models.reconstructor import Reconstructor
        from vf3d.serving.app import check_port_free

        Reconstructor.load_config(self.model)  # the model directory check build_application makes, before Ray starts
        if not (self.address or os.environ.get("RAY_ADDRESS")):
            # A private cluster's proxy listens on this machine: a busy port would otherwise surface
            # as a long Serve traceback after Ray has started. (On a joined cluster the proxy may
            # already hold the port.)
            problem = check_port_free(config.host, config.port)
            if problem:
                raise UsageError(problem)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.serving.app import build_application, run_endpoint

        run_endpoint(build_application(self.model, config), config, log=log)


@command(
    "demo",
    help="run the whole pipeline at debug size (what `make demo` runs)",
    description="Run every available stage at debug size on this machine and print a summary of each.",
)
class Demo(Spec):
    """Every stage at debug size, on this machine."""

    out: Path = option("directory for all demo outputs (default: %(default)s)", default=Path("demo-output"))

    def run(self, config: Any, log: Log = print_flushed) -> None:
        from vf3d.demo import run_demo

        run_demo(self.out, log=log)


CONFIG_TABLES = {spec.config_kind: spec.presets for spec in SPECS.values() if spec.config_kind is not None and spec.presets is not None}
"""The preset tables `vf3d show-config` prints, by the name it gives them."""


@command(
    "show-config",
    help="print a preset's resolved configuration as JSON",
    description="Print a preset, optionally overridden by a YAML/JSON file, after validation.",
)
class ShowConfig(Spec):
    """A preset (+ a --config file), validated, as JSON on stdout."""

    kind: str = option("which configuration", choices=tuple(CONFIG_TABLES), positional=True)
    preset: str = option("preset name of that configuration (default: %(default)s)", default="debug")
    config: Path | None = option(CONFIG_HELP, default=None)

    def run(self, config: Any, log: Log = print_flushed) -> None:
        log(json.dumps(config_lib.to_dict(config_lib.resolve(CONFIG_TABLES[self.kind], self.preset, self.config)), indent=2))


JOB_STAGES = tuple(name for name, spec in SPECS.items() if spec.runs_as_job)
"""The commands that run as Ray jobs (jobs/<command>.py), in pipeline order."""

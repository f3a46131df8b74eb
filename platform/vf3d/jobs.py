"""Pipeline stages as Ray jobs: job config files, the job entrypoints' logic, and `vf3d submit`.

A job config file (jobs/configs/*.yaml) names one stage and how to run it:

    stage: render-assets          # which `vf3d` stage (required; must match the entrypoint)
    preset: debug                 # the stage's --preset (default: the stage's own default)
    args:                         # the stage's command-line options, by long name (no dashes)
      assets: sample              #   render-assets only: gather pybullet's sample meshes
      out: job-output/orbits
    config:                       # overrides of the preset's fields, as in a --config file
      pool: {max_actors: 4}

Unknown keys are rejected with the key named, at every level; `args:` is checked against the
stage's spec (vf3d.specs: its option names and types). `jobs/<stage>.py --config FILE [stage
options]` loads the file, lets options given after it override the file's `args`, makes every path
absolute (relative paths resolve against $VF3D_DATA_ROOT, else the driver's working directory; an
input found only in the job's working directory, i.e. shipped in the repository like
jobs/prompts/debug.jsonl, resolves there), writes `config:` to a temporary file for the stage's own
--config, and runs the stage's spec as `vf3d STAGE` does (`vf3d.specs.run_command`), attached to
the cluster the job runs on (Ray sets RAY_ADDRESS for job drivers).

`prepare_submission` and `submit` send such an entrypoint to a cluster's job server with a runtime environment
holding the repository (working_dir: jobs/ and its configs) and the vf3d package (py_modules, so
a cluster image without vf3d still imports it), under a submission id derived from the stage,
its arguments and the job file's contents: submitting the same thing twice finds the first job
instead of starting a second one.

Only the standard library, the config modules and vf3d.specs are imported at module level (Ray lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vf3d import config as config_lib
from vf3d import specs, storage
from vf3d.config import ConfigError

STAGES = specs.JOB_STAGES
"""The stages that run as Ray jobs (those with a jobs/<stage>.py entrypoint), in pipeline order."""
STAGE_PRESETS = {stage: specs.SPECS[stage].presets for stage in STAGES}
"""Their preset tables (what a job file's `config:` overrides)."""

JOB_FILE_KEYS = ("stage", "preset", "args", "config")
RESERVED_ARGS = {
    "preset": "use the top-level `preset:` key",
    "config": "use the top-level `config:` mapping",
    "address": "a job attaches to the cluster it runs on",
}
"""Stage options a job file's `args:` may not set, and why."""

DATA_ROOT_ENV = "VF3D_DATA_ROOT"
"""Relative paths of a job resolve against this directory (else the driver's working directory,
which under `ray job submit --working-dir` is Ray's temporary copy of the repository)."""
SAMPLE_ASSETS = "sample"
"""`args: {assets: sample}` of render-assets: gather pybullet's sample meshes next to --out."""
SAMPLE_ASSETS_LIMIT = 8
SAMPLE_ASSETS_DIRNAME = "sample-assets"

RUNTIME_ENV_EXCLUDES = [
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "*.egg-info",
    "job-output",
    "demo-output",
    "bench-output",
    "bench-results",
]
"""Never uploaded with the working directory or the package (.gitignore is honoured as well)."""
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
LOG_TAIL_LINES = 20


class JobSubmitError(ValueError):
    """`vf3d submit` cannot go ahead (no jobs/ directory, unreachable address...): one line."""


# ---------------------------------------------------------------------------------------------
# Job config files
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JobSpec:
    """A validated job config file."""

    stage: str
    preset: str | None
    """The stage's preset (None: the stage's default)."""
    args: dict[str, Any]
    """Stage options by spec field name (`video_model`), values as in the file (paths as strings)."""
    config: dict[str, Any]
    """Overrides of the preset's fields (validated against the preset)."""
    path: Path | None = None


def _check_scalar(option: specs.Option, value: Any, where: str) -> Any:
    if option.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif option.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    else:  # Path or str: a non-empty string
        ok = isinstance(value, str) and bool(value)
        expected = "a non-empty string"
    if not ok:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    if option.choices is not None and value not in option.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, option.choices))}")
    return value


def check_value(option: specs.Option, value: Any, where: str) -> Any:
    """A job file's value for one stage option, typed as the option's field says (a list for a
    repeatable or multi-value option; one item of a repeatable one may stand alone), or
    ConfigError naming the key."""
    if option.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if option.repeated:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConfigError(f"{where}: expected at least one value")
        return [_check_scalar(option, item, f"{where}[{index}]") for index, item in enumerate(items)]
    if option.count is not None:
        if not isinstance(value, list) or len(value) != option.count:
            raise ConfigError(f"{where}: expected a list of {option.count} values, got {value!r}")
        return [_check_scalar(option, item, f"{where}[{index}]") for index, item in enumerate(value)]
    return _check_scalar(option, value, where)


def check_args(spec: type[specs.Spec], raw_args: dict[str, Any], where: str) -> dict[str, Any]:
    """A job file's `args:` for `spec`, by field name (dashes in keys read as underscores), with
    values as in the file; unknown keys, reserved ones and wrong types raise ConfigError naming the key."""
    options = {option.name: option for option in specs.options(spec)}
    args: dict[str, Any] = {}
    for key, value in raw_args.items():
        name = str(key).replace("-", "_")
        if name in RESERVED_ARGS:
            raise ConfigError(f"{where}: args.{key}: not allowed here ({RESERVED_ARGS[name]})")
        if name not in options:
            valid = sorted(option for option in options if option not in RESERVED_ARGS)
            raise ConfigError(f"{where}: args: unknown key {key!r} for {spec.command} (valid: {', '.join(valid)})")
        if value is None:
            continue
        if spec is specs.RenderAssets and name == "assets" and value == SAMPLE_ASSETS:
            args[name] = value
            continue
        args[name] = check_value(options[name], value, f"{where}: args.{key}")
    return args


def validate_job(data: dict[str, Any], stage: str | None = None, where: str = "job file") -> JobSpec:
    """Check a job file's contents (unknown keys, the stage, its preset, args and config)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    unknown = sorted(set(data) - set(JOB_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s): {', '.join(unknown)} (valid: {', '.join(JOB_FILE_KEYS)})")
    if "stage" not in data:
        raise ConfigError(f"{where}: `stage` is required (one of {', '.join(STAGES)})")
    if data["stage"] not in STAGES:
        raise ConfigError(f"{where}: stage: unknown stage {data['stage']!r}; choose one of: {', '.join(STAGES)}")
    if stage is not None and data["stage"] != stage:
        raise ConfigError(f"{where}: stage is {data['stage']!r}, but this runs {stage!r}")
    stage = data["stage"]
    spec = specs.SPECS[stage]
    preset = data.get("preset")
    if preset is not None and preset not in spec.presets:
        raise ConfigError(f"{where}: preset: unknown {stage} preset {preset!r}; choose one of: {', '.join(spec.presets)}")
    raw_args = data.get("args") or {}
    if not isinstance(raw_args, dict):
        raise ConfigError(f"{where}: args: expected a mapping of {stage} options")
    args = check_args(spec, raw_args, where)
    overrides = data.get("config") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: config: expected a mapping of {stage} config overrides")
    try:
        config_lib.merge(config_lib.preset(spec.presets, preset or spec.default_preset), overrides).validate()
    except ConfigError as error:
        raise ConfigError(f"{where}: config: {error}") from None
    return JobSpec(stage=stage, preset=preset, args=args, config=overrides)


def load_job_file(path: str | os.PathLike, stage: str | None = None) -> JobSpec:
    """Read and validate a job config file (YAML or JSON); `stage`: the stage it must name."""
    path = Path(path)
    job = validate_job(config_lib.load_overrides(path), stage, where=str(path))
    job.path = path
    return job


# ---------------------------------------------------------------------------------------------
# From a job file (plus command-line overrides) to the stage's spec
# ---------------------------------------------------------------------------------------------


class _StageArgumentParser(argparse.ArgumentParser):
    """Reads a stage's options given after a job file: bad ones raise ConfigError, one line
    (instead of argparse's usage text and exit)."""

    def __init__(self, stage: str) -> None:
        super().__init__(prog=f"vf3d {stage}", add_help=False)
        self.stage = stage

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.stage} arguments: {message}")


def parse_stage_args(stage: str, argv: list[str]) -> dict[str, Any]:
    """Stage options given on a command line, by field name: only those given (no defaults,
    nothing required), typed as the `vf3d STAGE` parser types them; bad ones raise ConfigError."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    parser = _StageArgumentParser(stage)
    specs.add_arguments(parser, specs.SPECS[stage], partial=True)
    return vars(parser.parse_args(argv))


@dataclasses.dataclass
class Invocation:
    """What a job runs: the stage's spec with these option values, after gathering sample assets
    if asked to."""

    stage: str
    values: dict[str, Any]
    """Option values by field name, typed (paths absolute): the preset and --config first."""
    sample_assets_dir: Path | str | None = None
    """Gather pybullet's sample meshes here first (render-assets with `assets: sample`); a URI
    under an object-store data root."""

    @property
    def argv(self) -> list[str]:
        """The same as a `vf3d` command line (what the job's log shows)."""
        return specs.to_argv(self.stage, self.values)

    def spec(self) -> specs.Spec:
        """The stage's spec instance (UsageError when a required option is missing)."""
        return specs.build(self.stage, self.values)


def data_root() -> Path | str:
    """Where a job's relative paths resolve: $VF3D_DATA_ROOT (a local directory or an s3:// /
    gs:// prefix), else the working directory."""
    return resolve_data_root(os.environ.get(DATA_ROOT_ENV) or os.getcwd())


def resolve_data_root(root: str | os.PathLike) -> Path | str:
    """An object-store prefix as it is (without a trailing slash), a local directory made absolute."""
    if storage.is_uri(str(root)):
        return str(root).rstrip("/")
    return Path(root).expanduser().resolve()


def build_invocation(
    job: JobSpec, extra_args: list[str], root: Path | str, config_file: Path | None, shipped: Path | None = None
) -> Invocation:
    """The option values of a job: the file's args overridden by `extra_args` (same option, later
    wins, including repeatable ones), every path made absolute against `root` (Ray Data and Train
    workers do not share the driver's working directory) -- or against `shipped` (the job's
    working directory: the repository) for an input that exists only there, such as
    jobs/prompts/debug.jsonl -- and `config_file` (the `config:` overrides, written by the
    caller) as the stage's --config. Required options are not checked here (`Invocation.spec`).

    `root` may be an s3:// or gs:// prefix: relative locations then become keys under it."""
    given = parse_stage_args(job.stage, extra_args)
    preset = given.pop("preset", None) or job.preset
    if "config" in given:
        raise ConfigError(f"{job.stage} arguments: --config here is the job file; put stage config overrides under its `config:` key")
    args = {**job.args, **given}

    def absolute(value: str | Path) -> Path | str:
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        under_root = storage.join(root, path.as_posix())
        if shipped is not None and not storage.exists(under_root) and (shipped / path).exists():
            return shipped / path
        return under_root

    invocation = Invocation(stage=job.stage, values={})
    if job.stage == specs.RenderAssets.command and args.get("assets") is not None and str(args["assets"]) == SAMPLE_ASSETS:
        if args.get("out") is None:
            raise ConfigError("render-assets: `assets: sample` needs --out (the samples go next to it)")
        invocation.sample_assets_dir = storage.join(storage.parent(absolute(args["out"])), SAMPLE_ASSETS_DIRNAME)
        args["assets"] = invocation.sample_assets_dir
    if preset is not None:
        invocation.values["preset"] = preset
    if config_file is not None:
        invocation.values["config"] = config_file
    options = {option.name: option for option in specs.options(specs.SPECS[job.stage])}

    def typed(option: specs.Option, item: Any) -> Any:
        if option.kind is specs.Location:  # a URI is already absolute; a local path resolves like a Path
            return item if storage.is_uri(str(item)) else specs.Location(absolute(item))
        # Every Path-typed stage option (--config) is reserved in job files, so none is relative here.
        return absolute(item) if option.kind is Path else item

    for name, value in args.items():
        option = options[name]
        if option.repeated:
            invocation.values[name] = [typed(option, item) for item in value]
        elif option.count is not None:
            invocation.values[name] = tuple(typed(option, item) for item in value)
        else:
            invocation.values[name] = typed(option, value)
    return invocation


def _entry_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{stage.replace('-', '_')}.py",
        allow_abbrev=False,
        description=f"Ray job entrypoint of `vf3d {stage}`: run it from a job config file, with any "
        f"`vf3d {stage}` options after it overriding the file's (see `vf3d {stage} --help`).",
        epilog=f"Relative paths resolve against ${DATA_ROOT_ENV} when set, else the working directory.",
    )
    parser.add_argument("--config", type=Path, metavar="JOBFILE", help="job config file (jobs/configs/*.yaml): stage, preset, args, config")
    return parser


def main(stage: str, argv: list[str] | None = None, log: specs.Log = specs.print_flushed) -> int:
    """What jobs/<stage>.py runs: `jobs/<stage>.py [--config JOBFILE] [stage options]`.

    Exit status: the stage's (0 done, 2 bad input with one line on stderr, 1 a failure)."""
    namespace, extra_args = _entry_parser(stage).parse_known_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="vf3d-job-") as scratch:
        try:
            if namespace.config is not None:
                job = load_job_file(namespace.config, stage)
            else:
                job = JobSpec(stage=stage, preset=None, args={}, config={})
            root = data_root()
            config_file = None
            if job.config:
                config_file = Path(scratch) / "job-config.json"
                config_file.write_text(json.dumps(job.config, indent=2) + "\n")
            invocation = build_invocation(job, extra_args, root, config_file, shipped=Path.cwd().resolve())
            spec = invocation.spec()
            if invocation.sample_assets_dir is not None:
                from vf3d.data.assets import gather_sample_assets

                gathered = gather_sample_assets(invocation.sample_assets_dir, limit=SAMPLE_ASSETS_LIMIT)
                log(f"gathered {len(gathered)} sample assets from pybullet_data into {invocation.sample_assets_dir}")
        except (ConfigError, specs.UsageError, RuntimeError) as error:  # RuntimeError: no pybullet for `assets: sample`
            print(f"vf3d job {stage}: error: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
        log(f"vf3d job {stage}: relative paths resolve against {root}")
        if DATA_ROOT_ENV not in os.environ and "working_dir_files" in Path(root).parts:
            log(
                f"vf3d job {stage}: note: this is Ray's temporary copy of the working directory and ${DATA_ROOT_ENV} is not set: "
                "relative outputs go away with it (use absolute paths on shared storage, or set it; vf3d submit does for a local cluster)"
            )
        log(f"vf3d job {stage}: vf3d {shlex.join(invocation.argv)}")
        if job.config:
            log(f"vf3d job {stage}: config overrides {json.dumps(job.config)}")
        return specs.run_command(spec, log=log)


# ---------------------------------------------------------------------------------------------
# vf3d submit
# ---------------------------------------------------------------------------------------------


def package_dir() -> Path:
    """The vf3d package directory (what py_modules uploads)."""
    return Path(__file__).resolve().parent


def find_working_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The repository root to upload as the job's working_dir: the directory holding jobs/."""
    candidates = [Path(explicit)] if explicit is not None else [package_dir().parents[1], Path.cwd()]
    for candidate in candidates:
        if (candidate / "jobs").is_dir():
            return candidate.resolve()
    where = str(candidates[0]) if explicit is not None else f"{candidates[0]} or {candidates[1]}"
    raise JobSubmitError(f"no jobs/ directory in {where}: run vf3d submit from the vf3d repository (or pass --working-dir)")


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _left_out_of_upload(root: Path, relative: Path) -> bool:
    """Whether packaging the working directory leaves this file out (our excludes, .gitignore)."""
    import fnmatch
    import subprocess

    if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in RUNTIME_ENV_EXCLUDES):
        return True
    try:
        return (
            subprocess.run(["git", "-C", str(root), "check-ignore", "-q", relative.as_posix()], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):  # no git: Ray still honours .gitignore, but we cannot tell
        return False


@dataclasses.dataclass
class Submission:
    """A job to submit: everything the job server gets, and the id derived from it."""

    stage: str
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def submission_id_for(stage: str, entrypoint: str, job_file_text: str | None, env_vars: dict[str, str]) -> str:
    """`vf3d-<stage>-<sha1[:12]>` of the stage, the entrypoint (job file path and stage
    arguments), the job file's contents and the job's environment variables: the same submit
    gives the same id (a retry finds the first job), anything different another."""
    document = json.dumps({"stage": stage, "entrypoint": entrypoint, "job_file": job_file_text, "env_vars": env_vars}, sort_keys=True)
    return f"vf3d-{stage}-{hashlib.sha1(document.encode()).hexdigest()[:12]}"


def prepare_submission(
    stage: str,
    address: str,
    job_file: str | os.PathLike | None = None,
    stage_args: list[str] | None = None,
    submission_id: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    working_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> Submission:
    """Check everything that can be checked here (the stage, the job file, the stage arguments,
    the working directory) and build the submission. `data_root` defaults to the current
    directory when `address` is on this machine (so relative outputs land where you are), and is
    left unset for a remote cluster (use absolute paths on shared storage there)."""
    from vf3d import __version__

    if stage not in STAGES:
        raise JobSubmitError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    stage_args = list(stage_args or [])
    root = find_working_dir(working_dir)
    entry = root / "jobs" / f"{stage.replace('-', '_')}.py"
    if not entry.is_file():
        raise JobSubmitError(f"job entrypoint not found: {entry}")
    command = ["python", entry.relative_to(root).as_posix()]
    job_file_text = None
    if job_file is not None:
        job_path = Path(job_file).resolve()
        job = load_job_file(job_path, stage)  # fail here, not on the cluster
        try:
            relative = job_path.relative_to(root)
        except ValueError:
            raise JobSubmitError(f"the job file must be inside the working directory {root} (it is uploaded with it): {job_file}") from None
        if _left_out_of_upload(root, relative):
            raise JobSubmitError(
                f"the job file is not uploaded with the working directory (.gitignore or vf3d's excludes leave it out): {job_file}"
            )
        command += ["--config", relative.as_posix()]
        job_file_text = job_path.read_text()
    else:
        job = JobSpec(stage=stage, preset=None, args={}, config={})
    build_invocation(job, stage_args, Path("/"), None)  # the stage arguments parse and combine
    command += stage_args
    entrypoint = shlex.join(command)

    env_vars: dict[str, str] = {}
    if data_root is None and _is_loopback(address):
        data_root = Path.cwd()
    if data_root is not None:
        env_vars[DATA_ROOT_ENV] = str(resolve_data_root(data_root))
    runtime_env: dict[str, Any] = {"working_dir": str(root), "py_modules": [str(package_dir())], "excludes": list(RUNTIME_ENV_EXCLUDES)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return Submission(
        stage=stage,
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        submission_id=submission_id or submission_id_for(stage, entrypoint, job_file_text, env_vars),
        entrypoint_num_cpus=num_cpus,
        entrypoint_num_gpus=num_gpus,
        metadata={"vf3d_stage": stage, "vf3d_version": __version__, "submitted_by": "vf3d submit"},
    )


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    """JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its `address`
    argument; an explicit --address must win."""
    saved = {name: os.environ.pop(name) for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    """A JobSubmissionClient for the job server (dashboard) at `address`, or JobSubmitError."""
    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's client logs every package it builds and uploads at INFO; keep its warnings, except
    # working_dir's notice that .git and .venv are now left out (which is what we want).
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    try:
        with _without_address_env():
            return JobSubmissionClient(address)
    except Exception as error:  # ConnectionError, bad URLs, version checks: all one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise JobSubmitError(f"cannot reach the Ray job server at {address}: {message}") from None


def _job_info(client, submission_id: str, log=print):
    """The job's JobDetails, or None when the cluster has no job with that id."""
    try:
        return _retrying(lambda: client.get_job_info(submission_id), f"the status of job {submission_id}", log)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            return None
        raise


def _status(info) -> str:
    return getattr(info.status, "value", str(info.status))


@dataclasses.dataclass
class SubmitOutcome:
    submission_id: str
    existed: bool
    """A job with this id was already on the cluster: nothing was submitted."""
    status: str


AGENT_NOT_READY = "No available agent to submit job"
"""Ray's job server answers this (HTTP 500) until a node's dashboard agent has registered: right
after the head starts, or while a busy head is slow to bring its agent up."""
AGENT_WAIT_S = 120.0
"""How long `submit` (and each status query of `wait_for_job`) retries while the job server has
no agent yet or drops its connections."""


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _connection_dropped(error: BaseException) -> bool:
    """Whether `error` is a dropped, reset or refused connection to the job server (a busy or
    restarting dashboard closes connections without answering): worth the same request again."""
    import requests

    return isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def _agent_not_ready(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and AGENT_NOT_READY in str(error)


def _retrying(call, what: str, log=print, wait_s: float = AGENT_WAIT_S):
    """`call()`, repeated every 2 s for up to `wait_s` while the job server drops the connection
    or has no agent yet (each said once); then JobSubmitError naming `what` was asked. Only for
    requests that are safe to repeat."""
    deadline = time.monotonic() + wait_s
    said: set[str] = set()
    while True:
        try:
            return call()
        except Exception as error:
            if _connection_dropped(error):
                reason = "the connection to the Ray job server dropped"
                detail = f" ({what}: {_first_line(error)})"
                give_up = f"the Ray job server kept dropping the connection for {wait_s:.0f} s ({what}): {_first_line(error)}"
            elif _agent_not_ready(error):
                reason, detail = "the cluster's job agent is not ready yet", ""
                give_up = f"the Ray job server has had no agent to run jobs for {wait_s:.0f} s (is the head node's dashboard agent up?)"
            else:
                raise
            if time.monotonic() > deadline:
                raise JobSubmitError(give_up) from None
            if reason not in said:
                log(f"{reason}{detail}; retrying")
                said.add(reason)
            time.sleep(2.0)


def _submit_when_an_agent_is_ready(client, submission: Submission, log=print) -> None:
    """`client.submit_job` through `_retrying` (the same submission id each time, so a retry
    never starts a second job).

    A dropped connection may have carried a submission the server accepted: when a retry then
    hears "already exists", that job is this one (the caller saw no job with the id before)."""
    dropped = False

    def attempt() -> None:
        nonlocal dropped
        try:
            client.submit_job(
                entrypoint=submission.entrypoint,
                submission_id=submission.submission_id,
                runtime_env=submission.runtime_env,
                entrypoint_num_cpus=submission.entrypoint_num_cpus,
                entrypoint_num_gpus=submission.entrypoint_num_gpus,
                metadata=submission.metadata,
            )
        except Exception as error:
            if dropped and "already exists" in str(error):
                return
            dropped = dropped or _connection_dropped(error)
            raise

    _retrying(attempt, f"the submission of {submission.submission_id}", log)


def submit(client, submission: Submission, log=print) -> SubmitOutcome:
    """Submit unless a job with the same submission id exists (then report it)."""
    info = _job_info(client, submission.submission_id, log)
    if info is None:
        try:
            _submit_when_an_agent_is_ready(client, submission, log)
        except RuntimeError as error:
            if "already exists" not in str(error):  # else: a concurrent identical submit won
                raise
        else:
            log(f"submitted job {submission.submission_id}: {submission.entrypoint}")
            return SubmitOutcome(submission.submission_id, existed=False, status="PENDING")
        info = _retrying(lambda: client.get_job_info(submission.submission_id), f"the status of job {submission.submission_id}", log)
    status = _status(info)
    log(
        f"job {submission.submission_id} already exists ({status}): not submitted again"
        + ("; pass another --submission-id to run it anew" if status in TERMINAL_STATUSES else "")
    )
    return SubmitOutcome(submission.submission_id, existed=True, status=status)


def _stream_logs(client, submission_id: str, write) -> None:
    import asyncio

    async def follow() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    asyncio.run(follow())


def wait_for_job(client, submission_id: str, log=print, write=None, poll_s: float = 1.0) -> int:
    """Stream the job's logs until it ends; 0 when it SUCCEEDED, 1 when it FAILED or was
    STOPPED (with its message and last log lines on stderr)."""
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))

    def job_info():
        return _retrying(lambda: client.get_job_info(submission_id), f"the status of job {submission_id}", log)

    info = job_info()
    streamed = False
    try:
        if _status(info) not in TERMINAL_STATUSES:
            try:
                _stream_logs(client, submission_id, write)
                streamed = True
            except Exception as error:  # the log socket dropped (dashboard restart...): poll instead
                log(f"log stream of {submission_id} ended early ({_first_line(error)}); polling its status")
        while _status(info := job_info()) not in TERMINAL_STATUSES:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log(f"stopped following job {submission_id}; it keeps running (`ray job stop {submission_id}` stops it)")
        return 130
    status = _status(info)
    if status == "SUCCEEDED":
        if not streamed:
            write(_last_lines(_retrying(lambda: client.get_job_logs(submission_id), f"the logs of job {submission_id}", log)))
        log(f"job {submission_id} SUCCEEDED")
        return 0
    lines = "" if streamed else _last_lines(_retrying(lambda: client.get_job_logs(submission_id), f"the logs of job {submission_id}", log))
    message = (info.message or "").strip().splitlines()  # Ray appends the last logs to it: those are above
    print(f"{lines}job {submission_id} {status}: {message[0] if message else 'no message'}", file=sys.stderr, flush=True)
    return 1


def _last_lines(text: str, count: int = LOG_TAIL_LINES) -> str:
    lines = text.splitlines()[-count:]
    return "".join(line + "\n" for line in lines)
